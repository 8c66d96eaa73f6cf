// Opening a real board over Web Serial with esptool-js. Loaded on demand
// (esptool-js and its stub flashers are most of the console's bytes).
import type { Loader } from "./flasher";

/** webSerialAvailable is false outside Chrome/Edge (and outside secure contexts). */
export function webSerialAvailable(): boolean {
  return typeof navigator !== "undefined" && "serial" in navigator;
}

export interface Connection {
  loader: Loader;
  close(): Promise<void>;
}

/** connectUSB asks the user for a serial port and wraps it in an ESPLoader. */
export async function connectUSB(log: (line: string) => void): Promise<Connection> {
  const { ESPLoader, Transport } = await import("esptool-js");
  const serial = (navigator as Navigator & { serial: { requestPort(o?: object): Promise<SerialPort> } }).serial;
  const port = await serial.requestPort({});
  const transport = new Transport(port, false);
  const loader = new ESPLoader({
    transport,
    baudrate: 460800,
    romBaudrate: 115200,
    terminal: { clean() {}, writeLine: (d: string) => log(d), write: (d: string) => log(d) },
  });
  return {
    loader: loader as unknown as Loader,
    close: () => transport.disconnect(),
  };
}
