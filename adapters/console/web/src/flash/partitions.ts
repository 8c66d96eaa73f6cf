// The ESP-IDF partition table (components/partition_table, as written by
// gen_esp32part.py): 32-byte entries from the table's offset (0x8000 by
// default), each `AA 50 type subtype offset:u32le size:u32le label[16]
// flags:u32le`; optionally an MD5 entry `EB EB FF*14 md5[16]` over the
// entries before it; 0xFF bytes after the last entry.

/** TABLE_OFFSET is where the bootloader reads the table (CONFIG_PARTITION_TABLE_OFFSET's default). */
export const TABLE_OFFSET = 0x8000;
/** TABLE_MAX_LEN is the space reserved for the table (gen_esp32part.py MAX_PARTITION_LENGTH). */
export const TABLE_MAX_LEN = 0xc00;

const ENTRY = 32;
export const TYPE_APP = 0x00;
export const TYPE_DATA = 0x01;
export const SUBTYPE_NVS = 0x02;

export interface Partition {
  label: string;
  type: number;
  subtype: number;
  offset: number;
  size: number;
  flags: number;
}

/** PartitionTableError says why bytes are not a usable partition table. */
export class PartitionTableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "PartitionTableError";
  }
}

import { md5 } from "./md5";

const hex = (n: number) => `0x${n.toString(16)}`;

/**
 * parsePartitionTable reads a table as read from flash at TABLE_OFFSET. It
 * refuses what the bootloader would refuse: no table at all, an unknown
 * entry, an MD5 that does not match, overlapping or misaligned partitions,
 * or one that reaches past flashSize (when known).
 */
export function parsePartitionTable(b: Uint8Array, flashSize?: number): Partition[] {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: Partition[] = [];
  let sawMD5 = false;
  for (let off = 0; off + ENTRY <= Math.min(b.length, TABLE_MAX_LEN); off += ENTRY) {
    const m0 = b[off], m1 = b[off + 1];
    if (m0 === 0xff && m1 === 0xff) {
      if (b.subarray(off, off + ENTRY).some((x) => x !== 0xff)) {
        throw new PartitionTableError(`corrupt partition table: entry ${out.length} at ${hex(TABLE_OFFSET + off)} is neither a partition nor empty`);
      }
      if (out.length === 0) {
        throw new PartitionTableError(`no partition table at ${hex(TABLE_OFFSET)}: the flash there is erased`);
      }
      return checked(out, flashSize);
    }
    if (m0 === 0xeb && m1 === 0xeb) {
      const want = Array.from(b.subarray(off + 16, off + 32), (x) => x.toString(16).padStart(2, "0")).join("");
      if (md5(b.subarray(0, off)) !== want) {
        throw new PartitionTableError("corrupt partition table: its MD5 does not match its entries");
      }
      sawMD5 = true;
      continue;
    }
    if (m0 !== 0xaa || m1 !== 0x50) {
      throw new PartitionTableError(
        out.length === 0 && !sawMD5
          ? `no partition table at ${hex(TABLE_OFFSET)} (found bytes ${hex(m0)} ${hex(m1)}, not the table's magic AA 50)`
          : `corrupt partition table: entry ${out.length} at ${hex(TABLE_OFFSET + off)} has no valid magic`,
      );
    }
    if (sawMD5) {
      throw new PartitionTableError("corrupt partition table: an entry follows the MD5 entry");
    }
    const labelBytes = b.subarray(off + 12, off + 28);
    const nul = labelBytes.indexOf(0);
    out.push({
      type: b[off + 2],
      subtype: b[off + 3],
      offset: dv.getUint32(off + 4, true),
      size: dv.getUint32(off + 8, true),
      label: new TextDecoder().decode(nul < 0 ? labelBytes : labelBytes.subarray(0, nul)),
      flags: dv.getUint32(off + 28, true),
    });
  }
  if (out.length === 0) throw new PartitionTableError(`no partition table at ${hex(TABLE_OFFSET)}`);
  throw new PartitionTableError("corrupt partition table: it has no end marker within 0xc00 bytes");
}

function checked(parts: Partition[], flashSize?: number): Partition[] {
  const sorted = [...parts].sort((x, y) => x.offset - y.offset);
  let end = TABLE_OFFSET + TABLE_MAX_LEN;
  for (const p of sorted) {
    if (p.size === 0) throw new PartitionTableError(`corrupt partition table: partition "${p.label}" has size 0`);
    if (p.offset % 0x1000 !== 0) throw new PartitionTableError(`corrupt partition table: partition "${p.label}" at ${hex(p.offset)} is not 4 KiB aligned`);
    if (p.offset < end) throw new PartitionTableError(`corrupt partition table: partition "${p.label}" at ${hex(p.offset)} overlaps the table or the partition before it`);
    end = p.offset + p.size;
    if (flashSize !== undefined && end > flashSize) {
      throw new PartitionTableError(`partition "${p.label}" ends at ${hex(end)}, past the end of the ${flashSize / 1048576} MiB flash`);
    }
  }
  return parts;
}

/** findNVS returns the data partition of subtype nvs labelled "nvs" (else the only nvs one). */
export function findNVS(parts: Partition[]): Partition {
  const nvs = parts.filter((p) => p.type === TYPE_DATA && p.subtype === SUBTYPE_NVS);
  const named = nvs.find((p) => p.label === "nvs");
  const p = named ?? (nvs.length === 1 ? nvs[0] : undefined);
  if (!p) {
    throw new PartitionTableError(
      nvs.length === 0
        ? `the partition table has no nvs partition (it has ${parts.map((x) => x.label).join(", ") || "none"}): nothing can be flashed safely`
        : `the partition table has ${nvs.length} nvs partitions and none is labelled "nvs": which one the firmware reads is not known`,
    );
  }
  if (p.flags & 1) {
    throw new PartitionTableError(`the nvs partition "${p.label}" is marked encrypted; espmdm's NVS image is plain and the firmware could not read it`);
  }
  if (p.size < 0x3000 || p.size > 0x100000 || p.size % 0x1000 !== 0) {
    throw new PartitionTableError(`the nvs partition is ${hex(p.size)} bytes; espmdm builds NVS images from 0x3000 to 0x100000 bytes in 4 KiB steps`);
  }
  return p;
}

/** describe is a partition as gen_esp32part.py prints it (label,type,subtype,offset,size). */
export function describe(p: Partition): string {
  return `${p.label},${p.type},${p.subtype},${hex(p.offset)},${hex(p.size)}`;
}
