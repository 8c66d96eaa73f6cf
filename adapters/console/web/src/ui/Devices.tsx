import { useState } from "preact/hooks";
import { ApiError, type Device, type DeviceModel, type RotationState } from "../api/client";
import { apiFilter, type Filter, silentChoices } from "../deviceFilter";
import { configFieldErrors } from "../fieldErrors";
import { navigate } from "../router";
import { badTags, parseTags, tagsText } from "../tags";
import { CreateDevices } from "./Batch";
import { ConfigEditor } from "./ConfigEditor";
import { Field, Link, Problem, StateBadge, stateNames, useAction, useApp, useLoad, When } from "./common";

function filterFromURL(): Filter {
  const q = new URLSearchParams(location.search);
  const f: Filter = {};
  if (q.get("model_id")) f.model_id = Number(q.get("model_id"));
  const st = q.get("rotation_state");
  if (st && (stateNames as readonly string[]).includes(st)) f.rotation_state = st as RotationState;
  if (q.get("active") === "true" || q.get("active") === "false") f.active = q.get("active") === "true";
  if (q.get("firmware_version")) f.firmware_version = q.get("firmware_version")!;
  const tags = q.getAll("tag").filter((t) => t !== "");
  if (tags.length) f.tag = tags;
  const silent = Number(q.get("silent"));
  if (silentChoices.some(([s]) => s === silent)) f.silent = silent;
  return f;
}

function filterToURL(f: Filter) {
  const q = new URLSearchParams();
  if (f.model_id) q.set("model_id", String(f.model_id));
  if (f.rotation_state) q.set("rotation_state", f.rotation_state);
  if (f.active !== undefined) q.set("active", String(f.active));
  if (f.firmware_version) q.set("firmware_version", f.firmware_version);
  for (const t of f.tag ?? []) q.append("tag", t);
  if (f.silent) q.set("silent", String(f.silent));
  const s = q.toString();
  history.replaceState(null, "", `/console/devices${s ? `?${s}` : ""}`);
}

export const PAGE_SIZE = 25;

/** configErrors turns a failed create/update into messages per config field: 400 for a config
 *  that is not an object, 409 for one the model's schema refuses. */
export function configErrors(err: unknown): Record<string, string> {
  if (err instanceof ApiError && (err.status === 400 || err.status === 409) && err.field === "config") return configFieldErrors(err.detail);
  return {};
}

export function CreateDevice({ models, onCreated }: { models: DeviceModel[]; onCreated: (d: Device) => void }) {
  const { api } = useApp();
  const [modelId, setModelId] = useState<number | undefined>(filterFromURL().model_id ?? models[0]?.id);
  const [config, setConfig] = useState<Record<string, unknown>>({});
  const [active, setActive] = useState(true);
  const [tags, setTags] = useState("");
  const act = useAction();
  const model = models.find((m) => m.id === modelId);
  const bad = badTags(parseTags(tags));
  const errs = configErrors(act.error);
  if (models.length === 0) return <p class="muted card">Create a device model first.</p>;
  return (
    <form class="card" aria-label="Create a device" noValidate onSubmit={async (e) => {
      e.preventDefault();
      if (!modelId || bad.length) return;
      const d = await act.run(() => api.createDevice({ device_model_id: modelId, config, active, tags: parseTags(tags) }));
      if (d) onCreated(d);
    }}>
      <h2>New device</h2>
      <Field label="Model" id="new-device-model" error={act.error instanceof ApiError && act.error.field === "device_model_id" ? act.error.detail : undefined}>
        <select id="new-device-model" value={modelId} onChange={(e) => setModelId(Number(e.currentTarget.value))}>
          {models.map((m) => <option value={m.id}>{m.code} — {m.name}</option>)}
        </select>
      </Field>
      <ConfigEditor key={modelId} id="new-device-config" schema={model?.config_schema} value={config} onChange={setConfig} errors={errs} />
      <Field label="Tags" id="new-device-tags" hint="optional, separated by spaces or commas"
        error={bad.length ? `not a tag: ${bad.join(", ")}` : act.error instanceof ApiError && act.error.field === "tags" ? act.error.detail : undefined}>
        <input id="new-device-tags" value={tags} onInput={(e) => setTags(e.currentTarget.value)} placeholder="site:berlin canary" />
      </Field>
      <div class="check">
        <input id="new-device-active" type="checkbox" checked={active} onChange={(e) => setActive(e.currentTarget.checked)} />
        <label for="new-device-active">Active</label>
      </div>
      {act.error && !(act.error instanceof ApiError && act.error.field === "config") ? <Problem error={act.error} /> : null}
      {act.error instanceof ApiError && act.error.field === "config" ? (
        <p class="problem" role="alert">The server refused the config{act.error.requestId ? ` (request id ${act.error.requestId})` : ""}: see the messages at the fields.</p>
      ) : null}
      <button type="submit" disabled={act.busy}>Create device</button>
    </form>
  );
}

export function DevicesPage() {
  const { api, session } = useApp();
  const [filter, setFilter] = useState<Filter>(filterFromURL);
  const [version, setVersion] = useState(filter.firmware_version ?? "");
  const [tagText, setTagText] = useState(tagsText(filter.tag));
  const tagFilter = (text: string) => { const t = parseTags(text); return t.length ? t : undefined; };
  // cursors[i] is the cursor of page i (undefined for the first)
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const page = cursors.length - 1;
  const models = useLoad(() => api.listModels(), []);
  const devices = useLoad(() => api.listDevices({ ...apiFilter(filter, Date.now()), limit: PAGE_SIZE, cursor: cursors[page] }), [JSON.stringify(filter), cursors[page]]);
  const modelCode = (id: number) => models.data?.find((m) => m.id === id)?.code ?? `#${id}`;
  const change = (f: Filter) => {
    setFilter(f);
    setCursors([undefined]);
    filterToURL(f);
  };
  return (
    <section aria-labelledby="devices-h">
      <h1 id="devices-h">Devices</h1>
      <form class="filters" aria-label="Filter devices" onSubmit={(e) => { e.preventDefault(); change({ ...filter, firmware_version: version.trim() || undefined, tag: tagFilter(tagText) }); }}>
        <Field label="Model" id="filter-model">
          <select id="filter-model" value={filter.model_id ?? ""} onChange={(e) => change({ ...filter, model_id: e.currentTarget.value ? Number(e.currentTarget.value) : undefined })}>
            <option value="">all</option>
            {models.data?.map((m) => <option value={m.id}>{m.code}</option>)}
          </select>
        </Field>
        <Field label="Rotation state" id="filter-state">
          <select id="filter-state" value={filter.rotation_state ?? ""} onChange={(e) => change({ ...filter, rotation_state: (e.currentTarget.value || undefined) as RotationState | undefined })}>
            <option value="">all</option>
            {stateNames.map((s) => <option value={s}>{s}</option>)}
          </select>
        </Field>
        <Field label="Active" id="filter-active">
          <select id="filter-active" value={filter.active === undefined ? "" : String(filter.active)} onChange={(e) => change({ ...filter, active: e.currentTarget.value === "" ? undefined : e.currentTarget.value === "true" })}>
            <option value="">all</option>
            <option value="true">active</option>
            <option value="false">inactive</option>
          </select>
        </Field>
        <Field label="Reported firmware" id="filter-firmware">
          <input id="filter-firmware" value={version} size={12} maxLength={31} placeholder="any"
            onInput={(e) => setVersion(e.currentTarget.value)}
            onChange={(e) => change({ ...filter, firmware_version: e.currentTarget.value.trim() || undefined })} />
        </Field>
        <Field label="Tags (all of)" id="filter-tags">
          <input id="filter-tags" value={tagText} size={14} placeholder="any"
            onInput={(e) => setTagText(e.currentTarget.value)}
            onChange={(e) => change({ ...filter, tag: tagFilter(e.currentTarget.value) })} />
        </Field>
        <Field label="Not seen for" id="filter-silent">
          <select id="filter-silent" value={filter.silent ?? ""} onChange={(e) => change({ ...filter, silent: e.currentTarget.value ? Number(e.currentTarget.value) : undefined })}>
            <option value="">any time</option>
            {silentChoices.map(([s, label]) => <option value={s}>{label}</option>)}
          </select>
        </Field>
      </form>
      <Problem error={devices.error} />
      {devices.data && (
        <>
          <table>
            <caption class="sr-only">Devices, page {page + 1}</caption>
            <thead><tr><th scope="col">Id</th><th scope="col">Client id</th><th scope="col">Model</th><th scope="col">Active</th><th scope="col">Rotation</th><th scope="col">Firmware</th><th scope="col">Tags</th><th scope="col">Last seen</th></tr></thead>
            <tbody>
              {devices.data.devices.map((d) => (
                <tr key={d.id}>
                  <td><Link href={`/console/devices/${d.id}`}>{d.id}</Link></td>
                  <td><Link href={`/console/devices/${d.id}`}><code>{d.client_id}</code></Link></td>
                  <td>{modelCode(d.device_model_id)}</td>
                  <td>{d.active ? "yes" : <span class="muted">inactive</span>}</td>
                  <td><StateBadge state={d.rotation_state} /></td>
                  <td>{d.reported ? <code>{d.reported.firmware_version}</code> : <span class="muted">not reported</span>}</td>
                  <td>{d.tags.length ? d.tags.map((t) => <><span class="badge">{t}</span>{" "}</>) : <span class="muted">—</span>}</td>
                  <td><When at={d.last_seen_at} /></td>
                </tr>
              ))}
              {devices.data.devices.length === 0 && <tr><td colSpan={8} class="muted">No devices{filter.model_id || filter.rotation_state || filter.active !== undefined || filter.firmware_version || filter.tag || filter.silent ? " match these filters" : " yet"}.</td></tr>}
            </tbody>
          </table>
          <nav class="pager" aria-label="Pages">
            <button type="button" disabled={page === 0} onClick={() => setCursors(cursors.slice(0, -1))}>← Previous</button>
            <span>Page {page + 1}</span>
            <button type="button" disabled={!devices.data.next_cursor} onClick={() => setCursors([...cursors, devices.data!.next_cursor ?? undefined])}>Next →</button>
          </nav>
        </>
      )}
      {session.isAdmin && models.data && <CreateDevice models={models.data} onCreated={(d) => navigate(`/console/devices/${d.id}`)} />}
      {session.isAdmin && models.data && <CreateDevices models={models.data} onCreated={devices.reload} />}
    </section>
  );
}
