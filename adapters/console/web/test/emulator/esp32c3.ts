// An emulated ESP32-C3 behind a Web Serial port: it answers the ROM
// loader's and the flasher stub's serial protocol (SLIP frames, esptool's
// command set) for the commands esptool-js's ESPLoader sends when the
// console flashes a partition, over an emulated 4 MiB flash. Used by the
// Vitest test of the flashing flow and, bundled, by the Playwright test
// (injected as navigator.serial). Only standard Web APIs: Streams,
// DecompressionStream.

const CHIP_ID_C3 = 5;
const SPI_W0 = 0x60002000 + 0x58;
const FLASH_ID = 0x1640ef; // Winbond, size id 0x16 = 4 MiB

export interface Violation { op: string; offset: number; size: number }

/** A write the chip was asked to do: the region and how it was asked. */
export interface Write { offset: number; size: number; op: string }

function u32(b: Uint8Array, off: number): number {
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
}

function slipEncode(p: Uint8Array): Uint8Array {
  const out: number[] = [0xc0];
  for (const x of p) {
    if (x === 0xc0) out.push(0xdb, 0xdc);
    else if (x === 0xdb) out.push(0xdb, 0xdd);
    else out.push(x);
  }
  out.push(0xc0);
  return new Uint8Array(out);
}

async function inflate(data: Uint8Array): Promise<Uint8Array> {
  const ds = new DecompressionStream("deflate");
  const w = ds.writable.getWriter();
  void w.write(data as BufferSource);
  void w.close();
  return new Uint8Array(await new Response(ds.readable).arrayBuffer());
}

export type MD5 = (b: Uint8Array) => string;

export class EmulatedESP32C3 {
  readonly flash: Uint8Array;
  readonly writes: Write[] = [];
  readonly commands: number[] = [];
  /** events lists the commands ("op=13") and the EN line ("rts=false") in order. */
  readonly events: string[] = [];
  readable: ReadableStream<Uint8Array> | null = null;
  writable: WritableStream<Uint8Array> | null = null;
  resets = 0;
  private ctrl?: ReadableStreamDefaultController<Uint8Array>;
  private frame: number[] | null = null;
  private esc = false;
  private stub = false;
  private queue: Promise<void> = Promise.resolve();
  private reading?: { addr: number; size: number; sent: number; packet: number };
  private defl?: { offset: number; size: number; compressed: Uint8Array[] };

  constructor(flashSize: number, private readonly md5: MD5) {
    this.flash = new Uint8Array(flashSize).fill(0xff);
  }

  getInfo() { return { usbVendorId: 0x10c4, usbProductId: 0xea60 }; } // a CP2102 bridge

  async open(_o: { baudRate: number }) {
    this.readable = new ReadableStream<Uint8Array>({ start: (c) => { this.ctrl = c; } });
    this.writable = new WritableStream<Uint8Array>({ write: (chunk) => this.receive(chunk) });
  }

  async close() {
    try { this.ctrl?.close(); } catch { /* already closed */ }
    this.readable = null;
    this.writable = null;
  }

  async setSignals(s: { dataTerminalReady?: boolean; requestToSend?: boolean }) {
    // EN pulled low (RTS) resets the chip: the stub is gone.
    if (s.requestToSend !== undefined) this.events.push(`rts=${s.requestToSend}`);
    if (s.requestToSend === true) {
      this.stub = false;
      this.resets++;
    }
  }

  private send(p: Uint8Array) { this.ctrl?.enqueue(slipEncode(p)); }

  private reply(op: number, val = 0, data: Uint8Array = new Uint8Array(0), status: [number, number] = [0, 0]) {
    const body = new Uint8Array(data.length + 2);
    body.set(data);
    body.set(status, data.length);
    const p = new Uint8Array(8 + body.length);
    p[0] = 0x01;
    p[1] = op;
    p[2] = body.length & 0xff;
    p[3] = body.length >> 8;
    new DataView(p.buffer).setUint32(4, val >>> 0, true);
    p.set(body, 8);
    this.send(p);
  }

  private receive(chunk: Uint8Array) {
    for (const x of chunk) {
      if (x === 0xc0) {
        if (this.frame && this.frame.length) {
          const f = new Uint8Array(this.frame);
          this.queue = this.queue.then(() => this.handle(f));
        }
        this.frame = [];
        continue;
      }
      if (!this.frame) continue;
      if (this.esc) {
        this.frame.push(x === 0xdc ? 0xc0 : x === 0xdd ? 0xdb : x);
        this.esc = false;
      } else if (x === 0xdb) this.esc = true;
      else this.frame.push(x);
    }
  }

  private sendReadPacket() {
    const r = this.reading!;
    if (r.sent >= r.size) return;
    const n = Math.min(r.packet, r.size - r.sent);
    this.send(this.flash.slice(r.addr + r.sent, r.addr + r.sent + n));
    r.sent += n;
  }

  private async finishDeflate() {
    const d = this.defl;
    if (!d) return;
    this.defl = undefined;
    const total = d.compressed.reduce((n, c) => n + c.length, 0);
    const all = new Uint8Array(total);
    let o = 0;
    for (const c of d.compressed) { all.set(c, o); o += c.length; }
    const data = await inflate(all);
    if (data.length > d.size) throw new Error(`compressed data inflates to ${data.length} bytes, more than the ${d.size} announced`);
    this.flash.set(data, d.offset);
  }

  private async handle(f: Uint8Array) {
    if (this.reading && f.length === 4) { // READ_FLASH ack: bytes received so far
      const got = u32(f, 0);
      if (got >= this.reading.size) {
        const r = this.reading;
        this.reading = undefined;
        const digest = this.md5(this.flash.subarray(r.addr, r.addr + r.size));
        this.send(new Uint8Array(digest.match(/../g)!.map((h) => parseInt(h, 16))));
      } else this.sendReadPacket();
      return;
    }
    if (f.length < 8 || f[0] !== 0x00) return;
    const op = f[1];
    const data = f.subarray(8);
    this.commands.push(op);
    this.events.push(`op=${op.toString(16)}`);
    if (op !== 0x11) await this.finishDeflate();
    switch (op) {
      case 0x08: // SYNC: the ROM answers 8 times
        for (let i = 0; i < 8; i++) this.reply(op, this.stub ? 0 : 0x20120707);
        return;
      case 0x14: { // GET_SECURITY_INFO
        const info = new Uint8Array(20);
        new DataView(info.buffer).setUint32(12, CHIP_ID_C3, true);
        this.reply(op, 0, info);
        return;
      }
      case 0x0a: { // READ_REG
        const addr = u32(data, 0);
        this.reply(op, addr === SPI_W0 ? FLASH_ID : 0);
        return;
      }
      case 0x09: case 0x05: case 0x07: case 0x0d: case 0x0b: case 0x0f: // WRITE_REG, MEM_*, SPI_ATTACH, SPI_SET_PARAMS, CHANGE_BAUD
        this.reply(op);
        return;
      case 0x06: // MEM_END: the stub starts and says hello
        this.reply(op);
        this.stub = true;
        this.send(new TextEncoder().encode("OHAI"));
        return;
      case 0xd2: { // READ_FLASH (stub)
        const addr = u32(data, 0), size = u32(data, 4), packet = u32(data, 12);
        this.reply(op);
        this.reading = { addr, size, sent: 0, packet };
        this.sendReadPacket();
        return;
      }
      case 0x10: { // FLASH_DEFL_BEGIN: the stub erases what it will write
        const size = u32(data, 0), offset = u32(data, 12);
        const erase = Math.ceil(size / 0x1000) * 0x1000;
        this.writes.push({ offset, size: erase, op: "FLASH_DEFL_BEGIN" });
        this.flash.fill(0xff, offset, offset + erase);
        this.defl = { offset, size, compressed: [] };
        this.reply(op);
        return;
      }
      case 0x11: { // FLASH_DEFL_DATA
        const len = u32(data, 0);
        this.defl?.compressed.push(data.slice(16, 16 + len));
        this.reply(op);
        return;
      }
      case 0x12: // FLASH_DEFL_END
        this.reply(op);
        return;
      case 0x13: { // SPI_FLASH_MD5 (stub: 16 raw bytes)
        const addr = u32(data, 0), size = u32(data, 4);
        const hex = this.md5(this.flash.subarray(addr, addr + size));
        this.reply(op, 0, new Uint8Array(hex.match(/../g)!.map((h) => parseInt(h, 16))));
        return;
      }
      case 0xd0: case 0xd1: case 0x02: case 0x03: // erase all / region, plain writes: not what the console should send
        this.writes.push({ offset: data.length >= 8 ? u32(data, 0) : 0, size: data.length >= 8 ? u32(data, 4) : 0, op: `0x${op.toString(16)}` });
        this.reply(op);
        return;
      default:
        this.reply(op, 0, new Uint8Array(0), [1, 5]); // invalid command
    }
  }
}
