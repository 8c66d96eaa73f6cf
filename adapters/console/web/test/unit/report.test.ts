import { describe, expect, it } from "vitest";
import type { FleetFirmware } from "../../src/api/client";
import { apiFilter } from "../../src/deviceFilter";
import { bytes, fleetShares, reportFacts, uptime } from "../../src/report";

describe("state reports", () => {
  it("says an uptime in days, hours, minutes and seconds", () => {
    expect(uptime(0)).toBe("0 s");
    expect(uptime(59)).toBe("59 s");
    expect(uptime(3600)).toBe("1 h");
    expect(uptime(90061)).toBe("1 d 1 h 1 min 1 s");
  });

  it("says a heap size in bytes and KiB", () => {
    expect(bytes(512)).toBe("512 B");
    expect(bytes(181234)).toBe("177.0 KiB (181234 B)");
  });

  it("lists what the device reported, and only that", () => {
    expect(reportFacts({ firmware_version: "1.0.0" })).toEqual([["Firmware version", "1.0.0"]]);
    const f = reportFacts({
      firmware_version: "2.0.0", ota_state: "pending_verify", partition: "ota_0", ota: { target: "2.0.0", result: "rolled_back" },
      secure_version: 0, uptime_s: 61, free_heap: 100, rssi: -60, idf_version: "v5.3.1", reset_reason: "panic", app_elf_sha256: "0a",
    });
    expect(Object.fromEntries(f)).toEqual({
      "Firmware version": "2.0.0", "OTA state": "pending_verify (new image on probation)", "Running partition": "ota_0",
      "Last OTA": "2.0.0: rolled back by the bootloader", "Secure version": "0", "App ELF SHA-256": "0a", "ESP-IDF": "v5.3.1",
      "Reset reason": "panic", Uptime: "1 min 1 s", "Free heap": "100 B", RSSI: "-60 dBm",
    });
  });

  it("gives each model's versions their share, most devices first, unreported last", () => {
    const fleet: FleetFirmware = { models: [{ device_model_id: 3, code: "sensor", devices: 8, versions: [
      { firmware_version: "1.0.0", devices: 1 }, { firmware_version: "2.0.0", devices: 5 }, { firmware_version: null, devices: 2 },
    ] }] };
    expect(fleetShares(fleet)).toEqual([{ id: 3, code: "sensor", devices: 8, versions: [
      { version: "2.0.0", devices: 5, percent: 63 }, { version: "1.0.0", devices: 1, percent: 13 }, { version: null, devices: 2, percent: 25 },
    ] }]);
  });

  it("turns 'not seen for' into seen_before at the time of asking", () => {
    const now = Date.UTC(2026, 11, 7, 12, 0, 0);
    expect(apiFilter({ model_id: 2, firmware_version: "1.0.0", silent: 86400 }, now))
      .toEqual({ model_id: 2, firmware_version: "1.0.0", seen_before: "2026-12-06T12:00:00.000Z" });
    expect(apiFilter({ active: true }, now)).toEqual({ active: true });
  });
});
