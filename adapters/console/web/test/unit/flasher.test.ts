import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { FlashOptions } from "esptool-js";
import { describe, expect, it } from "vitest";
import { FlashError, flashNVS, flashSizeBytes, type Loader } from "../../src/flash/flasher";
import { md5 } from "../../src/flash/md5";

const table = (name: string) => new Uint8Array(readFileSync(join(__dirname, "../fixtures/partitions", name)));

/** FakeLoader records the calls of the sequence over an in-memory flash. */
class FakeLoader implements Loader {
  calls: string[] = [];
  flash = new Uint8Array(4 << 20).fill(0xff);
  corruptWrite = false;
  constructor(t: Uint8Array) {
    this.flash.set(t, 0x8000);
  }
  async main() { this.calls.push("main"); return "ESP32-D0WD-V3 (revision v3.1)"; }
  async detectFlashSize() { this.calls.push("detectFlashSize"); return "4MB"; }
  async readFlash(addr: number, size: number) { this.calls.push(`readFlash ${addr.toString(16)} ${size.toString(16)}`); return this.flash.slice(addr, addr + size); }
  async writeFlash(o: FlashOptions) {
    for (const f of o.fileArray) {
      this.calls.push(`writeFlash ${f.address.toString(16)} ${f.data.length.toString(16)}`);
      this.flash.set(f.data, f.address);
      if (this.corruptWrite) this.flash[f.address + 10] ^= 0xff;
    }
    o.reportProgress?.(0, 1, 1);
  }
  async flashMd5sum(addr: number, size: number) { this.calls.push(`flashMd5sum ${addr.toString(16)} ${size.toString(16)}`); return md5(this.flash.subarray(addr, addr + size)); }
  async after(mode?: string) { this.calls.push(`after ${mode}`); }
}

const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));
const image = (size: number) => new Uint8Array(size).map((_, i) => (i * 7) & 0xff);

describe("flashNVS", () => {
  it("writes exactly the nvs partition the table names, verifies and resets", async () => {
    const l = new FakeLoader(table("custom_nvs_far.bin"));
    const before = l.flash.slice();
    const asked: number[] = [];
    const res = await flashNVS(l, async (size) => { asked.push(size); return image(size); });
    expect(asked).toEqual([0x5000]);
    expect(l.calls).toEqual(["main", "detectFlashSize", "readFlash 8000 c00", "writeFlash c000 5000", "flashMd5sum c000 5000", "after hard_reset"]);
    expect(res.partition).toMatchObject({ label: "nvs", offset: 0xc000, size: 0x5000 });
    expect(same(l.flash.subarray(0xc000, 0x11000), image(0x5000))).toBe(true);
    // nothing else changed
    expect(same(l.flash.subarray(0, 0xc000), before.subarray(0, 0xc000))).toBe(true);
    expect(same(l.flash.subarray(0x11000), before.subarray(0x11000))).toBe(true);
  });

  it("refuses a table without nvs before asking espmdm or writing", async () => {
    const l = new FakeLoader(table("no_nvs.bin"));
    let asked = false;
    await expect(flashNVS(l, async (s) => { asked = true; return image(s); })).rejects.toThrow(/no nvs partition/);
    expect(asked).toBe(false);
    expect(l.calls.some((c) => c.startsWith("writeFlash"))).toBe(false);
  });

  it("refuses a board without a partition table", async () => {
    const l = new FakeLoader(new Uint8Array(0xc00).fill(0xff));
    const err = await flashNVS(l, async (s) => image(s)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FlashError);
    expect((err as FlashError).step).toBe("table");
    expect((err as Error).message).toMatch(/no partition table at 0x8000/);
  });

  it("writes nothing when espmdm's image has another size", async () => {
    const l = new FakeLoader(table("partitions_singleapp.bin"));
    await expect(flashNVS(l, async () => image(0x3000))).rejects.toThrow(/nothing was written/);
    expect(l.calls.some((c) => c.startsWith("writeFlash"))).toBe(false);
  });

  it("reports a failed verification and does not reset", async () => {
    const l = new FakeLoader(table("partitions_singleapp.bin"));
    l.corruptWrite = true;
    await expect(flashNVS(l, async (s) => image(s))).rejects.toThrow(/verification failed/);
    expect(l.calls).not.toContain("after hard_reset");
  });

  it("passes on espmdm's refusal as the image step's error", async () => {
    const l = new FakeLoader(table("partitions_singleapp.bin"));
    const err = await flashNVS(l, async () => { throw new Error("Not allowed (403)"); }).catch((e: unknown) => e);
    expect((err as FlashError).step).toBe("image");
    expect(l.calls.some((c) => c.startsWith("writeFlash"))).toBe(false);
  });
});

describe("flashSizeBytes", () => {
  it("reads esptool-js's sizes", () => {
    expect(flashSizeBytes("4MB")).toBe(4 << 20);
    expect(flashSizeBytes("512KB")).toBe(512 << 10);
    expect(flashSizeBytes(undefined)).toBeUndefined();
    expect(flashSizeBytes("detect")).toBeUndefined();
  });
});
