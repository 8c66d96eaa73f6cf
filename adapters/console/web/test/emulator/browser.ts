// Bundled by the Playwright test into an init script: navigator.serial
// hands out an emulated ESP32-C3 whose flash holds the partition table in
// window.__espTable (bytes at 0x8000), so the console's real flashing code
// runs against it in the browser. window.__espBoard is the board.
import { md5 } from "../../src/flash/md5";
import { EmulatedESP32C3 } from "./esp32c3";

declare global {
  interface Window {
    __espTable?: number[];
    __espBoard?: EmulatedESP32C3;
    __espBefore?: Uint8Array;
  }
}

Object.defineProperty(navigator, "serial", {
  configurable: true,
  value: {
    async requestPort() {
      const board = new EmulatedESP32C3(4 << 20, md5);
      board.flash.set(new Uint8Array(window.__espTable ?? []), 0x8000);
      board.flash.set(new Uint8Array(0x2000).fill(0xe9), 0x20000); // an "app"
      window.__espBefore = board.flash.slice();
      window.__espBoard = board;
      return board;
    },
    async getPorts() { return []; },
    addEventListener() {},
    removeEventListener() {},
  },
});
