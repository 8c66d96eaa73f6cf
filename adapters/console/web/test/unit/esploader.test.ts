// The flashing flow through esptool-js's real ESPLoader and Transport over
// an emulated ESP32-C3 (test/emulator): connect, chip detection, stub
// upload, partition table read, compressed write, MD5 verify, reset.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ESPLoader, Transport } from "esptool-js";
import { describe, expect, it } from "vitest";
import { flashNVS, type Loader } from "../../src/flash/flasher";
import { md5 } from "../../src/flash/md5";
import { EmulatedESP32C3 } from "../emulator/esp32c3";

const fixture = (dir: string, name: string) => new Uint8Array(readFileSync(join(__dirname, "../fixtures", dir, name)));
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

function board(table: string) {
  const chip = new EmulatedESP32C3(4 << 20, md5);
  chip.flash.set(fixture("partitions", table), 0x8000);
  // something in the app and phy partitions, to see that it stays
  chip.flash.set(new Uint8Array(0x1000).fill(0x5a), 0xb000);
  chip.flash.set(new Uint8Array(0x2000).fill(0xe9), 0x20000);
  const log: string[] = [];
  const transport = new Transport(chip as unknown as SerialPort, false);
  const loader = new ESPLoader({
    transport, baudrate: 115200, romBaudrate: 115200,
    terminal: { clean() {}, write: (d) => log.push(d), writeLine: (d) => log.push(d) },
  });
  return { chip, loader: loader as unknown as Loader, transport, log };
}

describe("flashing through esptool-js's ESPLoader", () => {
  it("writes exactly the NVS image at the nvs partition and changes nothing else", async () => {
    const { chip, loader, transport, log } = board("custom_nvs_far.bin");
    const before = chip.flash.slice();
    // An NVS image made by espmdm for a 0x5000 partition (espmdm nvs generate, see fixtures/nvs)
    const image = fixture("nvs", "device-0x5000.bin");
    const sizes: number[] = [];
    const res = await flashNVS(loader, async (size) => { sizes.push(size); return image; });
    await transport.disconnect();
    expect(sizes).toEqual([0x5000]);
    expect(res.chip).toMatch(/ESP32-C3/);
    expect(res.partition).toMatchObject({ offset: 0xc000, size: 0x5000 });
    expect(same(chip.flash.subarray(0xc000, 0x11000), image)).toBe(true);
    expect(same(chip.flash.subarray(0, 0xc000), before.subarray(0, 0xc000))).toBe(true);
    expect(same(chip.flash.subarray(0x11000), before.subarray(0x11000))).toBe(true);
    expect(chip.writes).toEqual([{ offset: 0xc000, size: 0x5000, op: "FLASH_DEFL_BEGIN" }]);
    // verified by the flash MD5, then reset: EN released after the MD5 command
    const lastOp = chip.events.map((e) => e.startsWith("op=")).lastIndexOf(true);
    expect(chip.events[lastOp]).toBe("op=13");
    expect(chip.events.slice(lastOp + 1)).toContain("rts=false");
    expect(chip.commands).toContain(0xd2); // the table was read through the stub
    expect(log.join("\n")).toMatch(/Stub running/);
  }, 30_000);

  it("refuses a board whose table has no nvs partition, having written nothing", async () => {
    const { chip, loader, transport } = board("no_nvs.bin");
    const before = chip.flash.slice();
    let asked = false;
    await expect(flashNVS(loader, async (s) => { asked = true; return new Uint8Array(s); })).rejects.toThrow(/no nvs partition/);
    await transport.disconnect();
    expect(asked).toBe(false);
    expect(chip.writes).toEqual([]);
    expect(same(chip.flash, before)).toBe(true);
  }, 30_000);
});
