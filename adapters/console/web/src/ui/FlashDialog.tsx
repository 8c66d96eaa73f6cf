import { useEffect, useRef, useState } from "preact/hooks";
import type { Device } from "../api/client";
import { flashNVS, type Progress } from "../flash/flasher";
import { connectUSB, webSerialAvailable } from "../flash/usb";
import { Problem, useApp } from "./common";

export function FlashDialog({ device, onClose }: { device: Device; onClose: () => void }) {
  const { api } = useApp();
  const ref = useRef<HTMLDialogElement>(null);
  const logRef = useRef<HTMLPreElement>(null);
  const [log, setLog] = useState<string[]>([]);
  const [progress, setProgress] = useState<Progress | null>(null);
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  useEffect(() => {
    const l = logRef.current;
    if (l) l.scrollTop = l.scrollHeight; // follow the log
  });
  const supported = webSerialAvailable();
  const start = async () => {
    setBusy(true);
    setError(undefined);
    setLog([]);
    let conn: Awaited<ReturnType<typeof connectUSB>> | undefined;
    try {
      conn = await connectUSB((l) => setLog((x) => [...x.slice(-200), l]));
      await flashNVS(conn.loader, (size) => api.provisioningBin(device.id, size), (p) => {
        setProgress(p);
        if (p.step !== "write" || p.written === undefined) setLog((x) => [...x.slice(-200), p.message]);
      });
    } catch (e) {
      setError(e);
    } finally {
      await conn?.close().catch(() => {});
      setBusy(false);
    }
  };
  return (
    <dialog ref={ref} class="flash" aria-labelledby="flash-h" onClose={onClose} onCancel={(e) => { if (busy) e.preventDefault(); }}>
      <h2 id="flash-h">Flash {device.client_id} over USB</h2>
      {!supported ? (
        <p class="problem" role="alert">This browser cannot talk to serial ports (Web Serial). Use Chrome or Edge on a desktop, over https or from localhost — or download the .bin and flash it with esptool.</p>
      ) : (
        <ol class="steps">
          <li>Plug the ESP32 into this computer by USB (hold BOOT if the board does not enter the loader by itself).</li>
          <li>Choose its serial port. The console reads the partition table at 0x8000, requests the NVS image for exactly the nvs partition's size, writes only that region, verifies it by MD5 and resets the board.</li>
        </ol>
      )}
      {progress && (
        <div role="status" aria-live="polite">
          <p>{progress.message}</p>
          {progress.step === "write" && progress.total ? <progress max={progress.total} value={progress.written} aria-label="written" /> : null}
        </div>
      )}
      <Problem error={error} />
      {log.length > 0 && <pre class="log" ref={logRef} aria-label="esptool log" tabIndex={0}>{log.join("\n")}</pre>}
      <div class="buttons">
        <button type="button" disabled={busy} onClick={() => ref.current?.close()}>Close</button>
        {supported && <button type="button" class="primary" disabled={busy} onClick={start}>{progress?.step === "done" ? "Flash another board" : "Connect and flash"}</button>}
      </div>
    </dialog>
  );
}
