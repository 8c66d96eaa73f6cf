import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { md5 } from "../../src/flash/md5";
import { describe as describePart, findNVS, parsePartitionTable, PartitionTableError } from "../../src/flash/partitions";

const fixture = (name: string) => new Uint8Array(readFileSync(join(__dirname, "../fixtures/partitions", name)));

// What `gen_esp32part.py X.bin` prints for each fixture (README.md there),
// as label,type,subtype,offset,size.
const tables: Record<string, string[]> = {
  "partitions_singleapp.bin": ["nvs,1,2,0x9000,0x6000", "phy_init,1,1,0xf000,0x1000", "factory,0,0,0x10000,0x100000"],
  "singleapp_nomd5.bin": ["nvs,1,2,0x9000,0x6000", "phy_init,1,1,0xf000,0x1000", "factory,0,0,0x10000,0x100000"],
  "partitions_two_ota.bin": ["nvs,1,2,0x9000,0x4000", "otadata,1,0,0xd000,0x2000", "phy_init,1,1,0xf000,0x1000",
    "factory,0,0,0x10000,0x100000", "ota_0,0,16,0x110000,0x100000", "ota_1,0,17,0x210000,0x100000"],
  "custom_nvs_far.bin": ["otadata,1,0,0x9000,0x2000", "phy_init,1,1,0xb000,0x1000", "nvs,1,2,0xc000,0x5000", "factory,0,0,0x20000,0x100000"],
  "no_nvs.bin": ["phy_init,1,1,0x9000,0x1000", "factory,0,0,0x10000,0x100000", "storage,1,129,0x110000,0x10000"],
};

describe("parsePartitionTable on tables made by gen_esp32part.py", () => {
  for (const [name, want] of Object.entries(tables)) {
    it(name, () => {
      expect(parsePartitionTable(fixture(name), 4 << 20).map(describePart)).toEqual(want);
    });
  }
});

describe("findNVS", () => {
  it("finds nvs wherever the table puts it, at the size it says", () => {
    expect(findNVS(parsePartitionTable(fixture("partitions_singleapp.bin")))).toMatchObject({ offset: 0x9000, size: 0x6000 });
    expect(findNVS(parsePartitionTable(fixture("partitions_two_ota.bin")))).toMatchObject({ offset: 0x9000, size: 0x4000 });
    expect(findNVS(parsePartitionTable(fixture("custom_nvs_far.bin")))).toMatchObject({ offset: 0xc000, size: 0x5000 });
  });
  it("refuses a table without an nvs partition", () => {
    expect(() => findNVS(parsePartitionTable(fixture("no_nvs.bin")))).toThrow(/no nvs partition/);
  });
  it("refuses an encrypted nvs partition", () => {
    const t = fixture("partitions_singleapp.bin").slice();
    t[28] = 1; // flags of the first entry (nvs): encrypted
    // the MD5 entry no longer matches: recompute it as gen_esp32part.py does
    const md5At = t.findIndex((b, i) => b === 0xeb && t[i + 1] === 0xeb && i % 32 === 0);
    const digest = createHash("md5").update(t.subarray(0, md5At)).digest();
    t.set(digest, md5At + 16);
    expect(() => findNVS(parsePartitionTable(t))).toThrow(/encrypted/);
  });
});

describe("parsePartitionTable refuses what is not a sound table", () => {
  const cases: [string, (t: Uint8Array) => Uint8Array, RegExp][] = [
    ["erased flash", (t) => t.fill(0xff), /no partition table at 0x8000: the flash there is erased/],
    ["other bytes (an app image)", (t) => { t.set([0xe9, 0x03]); return t; }, /no partition table at 0x8000/],
    ["a flipped bit under the MD5", (t) => { t[5] ^= 0x01; return t; }, /MD5 does not match/],
    ["a second entry with a bad magic", (t) => { t[32] = 0x12; return t; }, /entry 1 at 0x8020 has no valid magic/],
    ["a half-erased entry after the last one", (t) => { t[4 * 32 + 5] = 0; return t; }, /entry 3 at 0x8080 is neither a partition nor empty/],
  ];
  for (const [what, spoil, want] of cases) {
    it(what, () => {
      const t = spoil(fixture("partitions_singleapp.bin").slice());
      expect(() => parsePartitionTable(t)).toThrow(PartitionTableError);
      expect(() => parsePartitionTable(t)).toThrow(want);
    });
  }
  it("overlapping partitions (no MD5 to catch it)", () => {
    const t = fixture("singleapp_nomd5.bin").slice();
    new DataView(t.buffer).setUint32(32 + 4, 0xa000, true); // phy_init inside nvs
    expect(() => parsePartitionTable(t)).toThrow(/overlaps/);
  });
  it("a partition past the end of the flash", () => {
    expect(() => parsePartitionTable(fixture("partitions_two_ota.bin"), 2 << 20)).toThrow(/past the end of the 2 MiB flash/);
  });
  it("a table with no end within 0xc00 bytes", () => {
    const t = fixture("singleapp_nomd5.bin").slice();
    for (let off = 96; off < 0xc00; off += 32) t.set(t.subarray(32, 64), off);
    expect(() => parsePartitionTable(t)).toThrow(/corrupt/);
  });
});

describe("md5", () => {
  it("matches node's MD5 at block boundaries", () => {
    for (const n of [0, 1, 55, 56, 63, 64, 65, 1000, 0x6000]) {
      const b = new Uint8Array(n).map((_, i) => (i * 31 + 7) & 0xff);
      expect(md5(b)).toBe(createHash("md5").update(b).digest("hex"));
    }
  });
});
