import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { batchSummary, zipNames } from "../../src/batch/zipnames";

// batch.zip is an answer of POST /api/devices/batch (written by Go's
// archive/zip as espmdm writes it; see fixtures/batch/README.md).
const fixture = new Uint8Array(readFileSync(new URL("../fixtures/batch/batch.zip", import.meta.url)));

describe("zipNames", () => {
  it("lists a batch answer's files from its central directory", () => {
    expect(zipNames(fixture)).toEqual(["k1111111.bin", "k2222222.bin", "devices.csv", "errors.csv"]);
    expect(batchSummary(fixture)).toEqual({ made: 2, someFailed: true });
  });

  it("refuses what is not a ZIP, or a cut one", () => {
    expect(() => zipNames(new TextEncoder().encode("not a zip at all, not even close"))).toThrow(/not a ZIP/);
    expect(() => zipNames(fixture.subarray(0, fixture.length - 30))).toThrow();
    const broken = fixture.slice();
    const v = new DataView(broken.buffer);
    const eocd = broken.length - 22;
    v.setUint32(eocd + 16, 3, true); // the central directory's offset, wrong
    expect(() => zipNames(broken)).toThrow(/corrupt/);
  });
});
