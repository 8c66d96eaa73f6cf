// zipNames lists the file names of a ZIP archive from its central
// directory (no decompression): enough to tell what a batch answer holds
// (<key>.bin per device made, devices.csv, errors.csv when some failed).
// It throws on anything that is not a well-formed archive.

const EOCD = 0x06054b50;
const CENTRAL = 0x02014b50;

export function zipNames(b: Uint8Array): string[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  // The end-of-central-directory record: 22 bytes plus a comment of at most 64 KiB.
  let eocd = -1;
  for (let i = b.length - 22; i >= Math.max(0, b.length - 22 - 0xffff); i--) {
    if (v.getUint32(i, true) === EOCD) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new Error("not a ZIP archive (no end of central directory)");
  const count = v.getUint16(eocd + 10, true);
  let off = v.getUint32(eocd + 16, true);
  const names: string[] = [];
  const dec = new TextDecoder();
  for (let n = 0; n < count; n++) {
    if (off + 46 > b.length || v.getUint32(off, true) !== CENTRAL) throw new Error("a corrupt ZIP central directory");
    const nameLen = v.getUint16(off + 28, true);
    const extraLen = v.getUint16(off + 30, true);
    const commentLen = v.getUint16(off + 32, true);
    if (off + 46 + nameLen > b.length) throw new Error("a corrupt ZIP central directory");
    names.push(dec.decode(b.subarray(off + 46, off + 46 + nameLen)));
    off += 46 + nameLen + extraLen + commentLen;
  }
  return names;
}

/** batchSummary counts the devices a batch answer holds and tells whether some failed. */
export function batchSummary(b: Uint8Array): { made: number; someFailed: boolean } {
  const names = zipNames(b);
  return { made: names.filter((n) => n.endsWith(".bin")).length, someFailed: names.includes("errors.csv") };
}
