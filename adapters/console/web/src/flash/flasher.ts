// The USB flashing sequence of SPEC §11: connect, detect the chip, read
// the partition table at 0x8000, find the nvs partition, fetch the
// device's NVS image built for exactly that size, write only that region,
// verify it by the flash MD5, reset. It talks to the chip through Loader,
// the part of esptool-js's ESPLoader it uses, so that it can be tested
// without a board.
import type { FlashOptions } from "esptool-js";
import { md5 } from "./md5";
import { findNVS, parsePartitionTable, TABLE_MAX_LEN, TABLE_OFFSET, type Partition } from "./partitions";

/** Loader is what the sequence needs of esptool-js's ESPLoader. */
export interface Loader {
  main(mode?: string): Promise<string>;
  detectFlashSize(): Promise<string | undefined>;
  readFlash(addr: number, size: number): Promise<Uint8Array>;
  writeFlash(options: FlashOptions): Promise<void>;
  flashMd5sum(addr: number, size: number): Promise<string>;
  after(mode?: string): Promise<void>;
}

export type Step = "connect" | "table" | "image" | "write" | "verify" | "reset" | "done";

export interface Progress {
  step: Step;
  message: string;
  /** written and total bytes while writing. */
  written?: number;
  total?: number;
}

export interface FlashResult {
  chip: string;
  partition: Partition;
  md5: string;
}

/** FlashError is a refusal or failure of the sequence, in the user's terms. */
export class FlashError extends Error {
  constructor(readonly step: Step, message: string) {
    super(message);
    this.name = "FlashError";
  }
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** flashSizeBytes turns esptool-js's "4MB" into bytes (undefined when not known). */
export function flashSizeBytes(s: string | undefined): number | undefined {
  const m = /^(\d+)(KB|MB)$/.exec(s ?? "");
  if (!m) return undefined;
  return Number(m[1]) * (m[2] === "MB" ? 1 << 20 : 1 << 10);
}

/**
 * flashNVS runs the sequence. image(size) returns the device's NVS
 * partition built for size bytes. Nothing is written unless the table
 * names a usable nvs partition and the image has exactly its size.
 */
export async function flashNVS(loader: Loader, image: (size: number) => Promise<Uint8Array>, progress: (p: Progress) => void = () => {}): Promise<FlashResult> {
  const step = async <T>(s: Step, message: string, f: () => Promise<T>): Promise<T> => {
    progress({ step: s, message });
    try {
      return await f();
    } catch (e) {
      if (e instanceof FlashError) throw e;
      throw new FlashError(s, e instanceof Error ? e.message : String(e));
    }
  };
  const chip = await step("connect", "Connecting to the chip's ROM loader…", () => loader.main("default_reset"));
  const flashSize = flashSizeBytes(await step("connect", `Connected to ${chip}; detecting the flash size…`, () => loader.detectFlashSize()));

  const table = await step("table", `Reading the partition table at ${hex(TABLE_OFFSET)}…`, () => loader.readFlash(TABLE_OFFSET, TABLE_MAX_LEN));
  const nvs = await step("table", "Looking for the nvs partition…", async () => findNVS(parsePartitionTable(table, flashSize)));

  const data = await step("image", `Requesting the device's NVS image for ${hex(nvs.size)} bytes (partition "${nvs.label}" at ${hex(nvs.offset)})…`, () => image(nvs.size));
  if (data.length !== nvs.size) {
    throw new FlashError("image", `the NVS image is ${data.length} bytes, the partition ${nvs.size}: nothing was written`);
  }
  const want = md5(data);

  await step("write", `Writing ${hex(nvs.size)} bytes at ${hex(nvs.offset)}…`, () =>
    loader.writeFlash({
      fileArray: [{ data, address: nvs.offset }],
      flashMode: "keep",
      flashFreq: "keep",
      flashSize: "keep",
      eraseAll: false,
      compress: true,
      reportProgress: (_i, written, total) => progress({ step: "write", message: `Writing… ${Math.round((100 * written) / total)} %`, written, total }),
    }),
  );
  const got = await step("verify", "Verifying the written region by its MD5…", () => loader.flashMd5sum(nvs.offset, nvs.size));
  if (got.toLowerCase() !== want) {
    throw new FlashError("verify", `verification failed: the flash at ${hex(nvs.offset)} has MD5 ${got}, the image ${want}. Flash again before using the device.`);
  }
  await step("reset", "Resetting the device…", () => loader.after("hard_reset"));
  progress({ step: "done", message: `Done: ${chip}, partition "${nvs.label}" at ${hex(nvs.offset)} (${hex(nvs.size)} bytes) written and verified.` });
  return { chip, partition: nvs, md5: want };
}
