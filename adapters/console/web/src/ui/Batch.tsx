import { useState } from "preact/hooks";
import { ApiError, type DeviceModel } from "../api/client";
import { batchSummary } from "../batch/zipnames";
import { configFieldErrors } from "../fieldErrors";
import { ConfigEditor } from "./ConfigEditor";
import { Field, Problem, useAction, useApp } from "./common";

/** download hands bytes to the browser as a file. */
function download(data: Uint8Array, name: string, type: string) {
  const url = URL.createObjectURL(new Blob([data as BlobPart], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** CreateDevices is "create N devices": one config for all, the partitions as a ZIP download. */
export function CreateDevices({ models, onCreated }: { models: DeviceModel[]; onCreated: () => void }) {
  const { api } = useApp();
  const [modelId, setModelId] = useState<number | undefined>(models[0]?.id);
  const [count, setCount] = useState("10");
  const [size, setSize] = useState("0x6000");
  const [config, setConfig] = useState<Record<string, unknown>>({});
  const [done, setDone] = useState<{ made: number; someFailed: boolean } | undefined>();
  const act = useAction();
  const model = models.find((m) => m.id === modelId);
  const err = act.error instanceof ApiError ? act.error : undefined;
  const errs = err?.field === "config" ? configFieldErrors(err.detail) : {};
  const [open, setOpen] = useState(false);
  if (models.length === 0) return null;
  // Closed, the form is not rendered at all: its config fields would
  // otherwise stand beside the single device's form with the same labels.
  if (!open) {
    return (
      <p class="card">
        <button type="button" onClick={() => setOpen(true)}>Create many devices…</button>{" "}
        <span class="muted">for the bench: up to 1000 at once, their partitions as a ZIP.</span>
      </p>
    );
  }
  return (
    <form class="card" aria-label="Create devices" noValidate onSubmit={async (e) => {
      e.preventDefault();
      if (!modelId) return;
      setDone(undefined);
      const zip = await act.run(() => api.createDeviceBatch({ device_model_id: modelId, count: Number(count), config, size }));
      if (!zip) return;
      download(zip, `${model?.code ?? "devices"}-${new Date().toISOString().replace(/[:.]/g, "")}.zip`, "application/zip");
      setDone(batchSummary(zip));
      onCreated();
    }}>
      <h2>Create devices</h2>
      <p class="muted">Makes the devices and downloads a ZIP: one NVS partition per device (<code>&lt;key&gt;.bin</code>), <code>devices.csv</code>, and <code>errors.csv</code> for any that failed.</p>
      <Field label="Model" id="batch-model" error={err?.field === "device_model_id" ? err.detail : undefined}>
        <select id="batch-model" value={modelId} onChange={(e) => setModelId(Number(e.currentTarget.value))}>
          {models.map((m) => <option value={m.id}>{m.code} — {m.name}</option>)}
        </select>
      </Field>
      <Field label="How many" id="batch-count" hint="1 to 1000" error={err?.field === "count" ? err.detail : undefined}>
        <input id="batch-count" type="number" min={1} max={1000} value={count} onInput={(e) => setCount(e.currentTarget.value)} />
      </Field>
      <Field label="Partition size" id="batch-size" hint="the nvs partition's size in your partition table, e.g. 0x6000" error={err?.field === "size" ? err.detail : undefined}>
        <input id="batch-size" value={size} onInput={(e) => setSize(e.currentTarget.value)} />
      </Field>
      <ConfigEditor key={modelId} id="batch-config" schema={model?.config_schema} value={config} onChange={setConfig} errors={errs} />
      {act.error && !(err && ["config", "count", "size", "device_model_id"].includes(err.field ?? "")) ? <Problem error={act.error} /> : null}
      {err && ["config", "count", "size", "device_model_id"].includes(err.field ?? "") ? (
        <p class="problem" role="alert">Nothing was made: the server refused the batch{err.requestId ? ` (request id ${err.requestId})` : ""}; see the message at the field.</p>
      ) : null}
      {done ? (
        <p role="status" class={done.someFailed ? "problem" : ""}>
          {done.made} device{done.made === 1 ? "" : "s"} made and downloaded{done.someFailed ? "; some could not be made: see errors.csv in the ZIP (the others stand)" : ""}.
        </p>
      ) : null}
      <button type="submit" disabled={act.busy}>{act.busy ? "Making the devices…" : "Make them and download the ZIP"}</button>
    </form>
  );
}
