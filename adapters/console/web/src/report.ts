// What the console makes of devices' state reports (SPEC §15): the facts of
// one report, and the fleet by reported firmware version. Pure functions,
// tested without a browser.
import type { Device, FleetFirmware } from "./api/client";

export type Reported = NonNullable<Device["reported"]>;

/** uptime says a number of seconds as days, hours, minutes and seconds. */
export function uptime(s: number): string {
  const parts: string[] = [];
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (d) parts.push(`${d} d`);
  if (h) parts.push(`${h} h`);
  if (m) parts.push(`${m} min`);
  if (r || parts.length === 0) parts.push(`${r} s`);
  return parts.join(" ");
}

/** bytes says a size in bytes, and in KiB from 1 KiB on. */
export function bytes(n: number): string {
  return n < 1024 ? `${n} B` : `${(n / 1024).toFixed(1)} KiB (${n} B)`;
}

const otaResults: Record<NonNullable<Reported["ota"]>["result"], string> = {
  installed: "installed",
  rolled_back: "rolled back by the bootloader",
  download_failed: "download failed",
  verify_failed: "image refused (verification failed)",
};

/** reportFacts lists what a report says, label and text, in the order the
 *  device page shows them; the members the device left out are left out. */
export function reportFacts(r: Reported): [string, string][] {
  const f: [string, string][] = [["Firmware version", r.firmware_version]];
  if (r.ota_state) f.push(["OTA state", r.ota_state === "pending_verify" ? "pending_verify (new image on probation)" : "valid"]);
  if (r.partition) f.push(["Running partition", r.partition]);
  if (r.ota) f.push(["Last OTA", `${r.ota.target}: ${otaResults[r.ota.result]}`]);
  if (r.secure_version !== undefined) f.push(["Secure version", String(r.secure_version)]);
  if (r.app_elf_sha256) f.push(["App ELF SHA-256", r.app_elf_sha256]);
  if (r.idf_version) f.push(["ESP-IDF", r.idf_version]);
  if (r.reset_reason) f.push(["Reset reason", r.reset_reason]);
  if (r.uptime_s !== undefined) f.push(["Uptime", uptime(r.uptime_s)]);
  if (r.free_heap !== undefined) f.push(["Free heap", bytes(r.free_heap)]);
  if (r.rssi !== undefined) f.push(["RSSI", `${r.rssi} dBm`]);
  return f;
}

/** A model's share of devices on one reported version (null: not reported). */
export interface VersionShare {
  version: string | null;
  devices: number;
  /** percent of the model's active devices, rounded to a whole number */
  percent: number;
}

/** fleetShares is each model's versions with their share of its devices,
 *  most devices first (the unreported ones last). */
export function fleetShares(f: FleetFirmware): { id: number; code: string; devices: number; versions: VersionShare[] }[] {
  return f.models.map((m) => ({
    id: m.device_model_id,
    code: m.code,
    devices: m.devices,
    versions: m.versions
      .map((v) => ({ version: v.firmware_version, devices: v.devices, percent: m.devices ? Math.round((100 * v.devices) / m.devices) : 0 }))
      .sort((a, b) => (a.version === null ? 1 : 0) - (b.version === null ? 1 : 0) || b.devices - a.devices || (a.version ?? "").localeCompare(b.version ?? "")),
  }));
}
