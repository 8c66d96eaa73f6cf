import { useState } from "preact/hooks";
import { ApiError, type Device, type DeviceModel } from "../api/client";
import { reportFacts } from "../report";
import { navigate } from "../router";
import { badTags, parseTags, tagsText } from "../tags";
import { ConfigEditor } from "./ConfigEditor";
import { Coredumps } from "./Coredumps";
import { configErrors } from "./Devices";
import { FlashDialog } from "./FlashDialog";
import { Confirm, download, Field, Link, Problem, StateBadge, useAction, useApp, useLoad, When } from "./common";

/** Tags shows a device's tags, each linked to the devices carrying it. */
export function Tags({ tags }: { tags: readonly string[] }) {
  if (tags.length === 0) return <span class="muted">none</span>;
  return <>{tags.map((t) => <><Link href={`/console/devices?tag=${encodeURIComponent(t)}`}><span class="badge">{t}</span></Link>{" "}</>)}</>;
}

function EditTags({ d, onSaved }: { d: Device; onSaved: () => void }) {
  const { api } = useApp();
  const [text, setText] = useState(tagsText(d.tags));
  const act = useAction();
  const bad = badTags(parseTags(text));
  const err = bad.length ? `not a tag (lower-case letters, digits and _ . : - only, at most 64): ${bad.join(", ")}`
    : act.error instanceof ApiError && act.error.field === "tags" ? act.error.detail : undefined;
  return (
    <form class="card" aria-label="Edit the device's tags" onSubmit={async (e) => {
      e.preventDefault();
      if (bad.length) return;
      if (await act.run(() => api.updateDevice(d.id, { tags: parseTags(text) }))) onSaved();
    }}>
      <h2>Tags</h2>
      <Field label="Tags" id="edit-device-tags" hint="separated by spaces or commas; campaigns select devices by them" error={err}>
        <input id="edit-device-tags" value={text} onInput={(e) => setText(e.currentTarget.value)} placeholder="site:berlin canary" />
      </Field>
      {act.error && !(act.error instanceof ApiError && act.error.field === "tags") ? <Problem error={act.error} /> : null}
      <button type="submit" disabled={act.busy || bad.length > 0}>Save tags</button>
    </form>
  );
}

function EditDevice({ d, model, onSaved }: { d: Device; model?: DeviceModel; onSaved: () => void }) {
  const { api } = useApp();
  const [config, setConfig] = useState<Record<string, unknown>>((d.config ?? {}) as Record<string, unknown>);
  const act = useAction();
  return (
    <form class="card" aria-label="Edit the device's config" noValidate onSubmit={async (e) => {
      e.preventDefault();
      if (await act.run(() => api.updateDevice(d.id, { config, active: d.active }))) onSaved();
    }}>
      <h2>Config</h2>
      <ConfigEditor id="edit-device-config" schema={model?.config_schema} value={config} onChange={setConfig} errors={configErrors(act.error)} />
      {act.error && !(act.error instanceof ApiError && act.error.field === "config") ? <Problem error={act.error} /> : null}
      <button type="submit" disabled={act.busy}>Save config</button>
    </form>
  );
}

function Identity({ id }: { id: number }) {
  const { api, session } = useApp();
  const st = useLoad(() => api.identity(id), [id]);
  const act = useAction();
  return (
    <div class="card" aria-labelledby="identity-h">
      <h2 id="identity-h">Keycloak identity</h2>
      <Problem error={st.error} />
      {st.data && (
        <dl class="facts">
          <dt>Client</dt><dd><code>{st.data.client_id}</code></dd>
          <dt>Exists</dt><dd>{st.data.exists ? "yes" : "no"}</dd>
          <dt>Enabled</dt><dd>{st.data.enabled ? "yes" : "no"}</dd>
          <dt>Service account</dt><dd>{st.data.service_account ? "yes" : "no"}</dd>
          <dt>Problems</dt><dd>{st.data.problems.length ? <ul>{st.data.problems.map((p) => <li>{p}</li>)}</ul> : "none"}</dd>
        </dl>
      )}
      {session.isAdmin && <button type="button" disabled={act.busy} onClick={async () => { if (await act.run(() => api.syncIdentity(id))) st.reload(); }}>Repair identity</button>}
      <Problem error={act.error} />
    </div>
  );
}

/** Reported is the device's latest state report (POST /iot/state): what it
 *  says it runs, as it said it. */
function Reported({ d }: { d: Device }) {
  return (
    <div class="card" aria-labelledby="reported-h">
      <h2 id="reported-h">Reported state</h2>
      {d.reported ? (
        <>
          <dl class="facts" aria-label="Latest state report">
            {reportFacts(d.reported).map(([k, v]) => <><dt>{k}</dt><dd>{k === "App ELF SHA-256" || k === "Firmware version" ? <code>{v}</code> : v}</dd></>)}
            <dt>Reported</dt><dd><When at={d.reported_at} /></dd>
          </dl>
          <p class="muted">The device sends a report at start, after an OTA and periodically; a new firmware version is recorded in the audit log.</p>
        </>
      ) : <p class="muted">No state report yet: the device has not reported what it runs.</p>}
    </div>
  );
}

function Provisioning({ d }: { d: Device }) {
  const { api } = useApp();
  const [size, setSize] = useState("0x6000");
  const [flashing, setFlashing] = useState(false);
  const act = useAction();
  return (
    <div class="card" aria-labelledby="prov-h">
      <h2 id="prov-h">Provisioning</h2>
      <p>The NVS partition holds the device's key, client id and secret, the token and server URLs and the WiFi credentials. Flashing over USB reads the board's partition table and builds the image for its nvs partition.</p>
      <div class="row">
        <label for="prov-size">Partition size</label>
        <input id="prov-size" value={size} size={10} onInput={(e) => setSize(e.currentTarget.value)} />
        <button type="button" disabled={act.busy} onClick={() => act.run(async () => {
          const n = Number(size);
          await download(await api.provisioningBin(d.id, Number.isFinite(n) ? n : undefined), `${d.client_id}-nvs.bin`);
        })}>Download .bin</button>
        <button type="button" class="primary" onClick={() => setFlashing(true)}>Flash over USB…</button>
      </div>
      <Problem error={act.error} />
      {flashing && <FlashDialog device={d} onClose={() => setFlashing(false)} />}
    </div>
  );
}

export function DevicePage({ id }: { id: number }) {
  const { api, session } = useApp();
  const dev = useLoad(() => api.getDevice(id), [id]);
  const models = useLoad(() => api.listModels(), []);
  const act = useAction();
  const [askDelete, setAskDelete] = useState(false);
  const [rotated, setRotated] = useState("");
  const d = dev.data;
  const model = models.data?.find((m) => m.id === d?.device_model_id);
  return (
    <section aria-labelledby="device-h">
      <p><Link href="/console/devices">← Devices</Link></p>
      <Problem error={dev.error} />
      {d && (
        <>
          <h1 id="device-h">Device {d.id} <code>{d.client_id}</code></h1>
          <dl class="facts">
            <dt>Key</dt><dd><code>{d.key}</code></dd>
            <dt>Model</dt><dd>{model ? <Link href={`/console/models/${model.id}`}>{model.code}</Link> : d.device_model_id}</dd>
            <dt>Active</dt><dd>{d.active ? "yes" : "no (refused on /iot, skipped by rotation)"}</dd>
            <dt>Tags</dt><dd><Tags tags={d.tags} /></dd>
            <dt>Rotation</dt><dd><StateBadge state={d.rotation_state} /></dd>
            <dt>Secret created</dt><dd><When at={d.secret_created_at} /></dd>
            <dt>Last rotation attempt</dt><dd><When at={d.last_rotation_attempt_at} /></dd>
            <dt>Last rotation completed</dt><dd><When at={d.last_rotation_completed_at} /></dd>
            <dt>Last seen</dt><dd><When at={d.last_seen_at} /></dd>
          </dl>
          {session.isAdmin && (
            <div class="row">
              <button type="button" disabled={act.busy} onClick={async () => { if (await act.run(() => api.updateDevice(d.id, { config: d.config, active: !d.active }))) dev.reload(); }}>
                {d.active ? "Deactivate" : "Activate"}
              </button>
              <button type="button" disabled={act.busy || !d.active} onClick={async () => { const r = await act.run(() => api.rotateDevice(d.id)); if (r) { setRotated(r.status === "queued" ? "Rotation queued." : "A rotation is already pending."); dev.reload(); } }}>
                Rotate secret
              </button>
              <button type="button" class="danger" onClick={() => setAskDelete(true)}>Delete…</button>
              {rotated && <span role="status">{rotated}</span>}
            </div>
          )}
          <Problem error={act.error} />
          {session.isAdmin ? <EditDevice key={d.updated_at} d={d} model={model} onSaved={dev.reload} /> : (
            <><h2>Config</h2><pre class="json" tabIndex={0}>{JSON.stringify(d.config, null, 2)}</pre></>
          )}
          {session.isAdmin && <EditTags key={d.updated_at} d={d} onSaved={dev.reload} />}
          <Reported d={d} />
          <Coredumps deviceId={d.id} />
          <Identity id={d.id} />
          {session.isAdmin && <Provisioning d={d} />}
          <Confirm open={askDelete} title={`Delete device ${d.client_id}?`} confirm="Delete device" onCancel={() => setAskDelete(false)}
            onConfirm={async () => { setAskDelete(false); if (await act.run(() => api.deleteDevice(d.id).then(() => true))) navigate("/console/devices"); }}>
            <p>The device row and its Keycloak client are removed: the device can no longer log in. This cannot be undone.</p>
          </Confirm>
        </>
      )}
    </section>
  );
}
