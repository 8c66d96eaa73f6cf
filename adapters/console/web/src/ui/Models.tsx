import { useState } from "preact/hooks";
import { ApiError, type DeviceModel, type Firmware, type FirmwareUpload } from "../api/client";
import { navigate } from "../router";
import { Confirm, Field, Link, Problem, useAction, useApp, useLoad, When } from "./common";
import { Crashes } from "./Coredumps";

/** ConfigSchema is what the API takes as config_schema: a JSON Schema (an object or a boolean), or null for none. */
type ConfigSchema = boolean | { [key: string]: unknown } | null;

function parseSchema(text: string): { schema?: ConfigSchema; error?: string } {
  if (text.trim() === "") return { schema: null };
  try {
    const v = JSON.parse(text) as unknown;
    if (v === null || typeof v === "boolean") return { schema: v };
    if (typeof v !== "object" || Array.isArray(v)) return { error: "a JSON Schema is an object (or true/false)" };
    return { schema: v as { [key: string]: unknown } };
  } catch (e) {
    return { error: `not valid JSON: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/** SchemaEditor is a JSON editor for a model's config_schema, checked as JSON while typing. */
function SchemaEditor({ id, value, onInput, error }: { id: string; value: string; onInput: (s: string) => void; error?: string }) {
  const local = parseSchema(value).error;
  const msg = local ?? error;
  return (
    <Field label="Config schema (JSON Schema, empty for none)" id={id} error={msg}>
      <textarea id={id} rows={10} spellcheck={false} value={value} aria-invalid={msg ? true : undefined}
        aria-describedby={msg ? `${id}-error` : undefined} onInput={(e) => onInput(e.currentTarget.value)} />
    </Field>
  );
}

const exampleSchema = `{
  "type": "object",
  "properties": {
    "interval_s": { "type": "integer", "minimum": 1, "description": "seconds between readings" }
  },
  "required": ["interval_s"]
}`;

function CreateModel({ onCreated }: { onCreated: (m: DeviceModel) => void }) {
  const { api } = useApp();
  const [code, setCode] = useState("");
  const [name, setName] = useState("");
  const [schema, setSchema] = useState(exampleSchema);
  const act = useAction();
  const fieldErr = (f: string) => (act.error instanceof ApiError && act.error.field === f ? act.error.detail : undefined);
  return (
    <form class="card" aria-label="Create a device model" onSubmit={async (e) => {
      e.preventDefault();
      const s = parseSchema(schema);
      if (s.error) return;
      const m = await act.run(() => api.createModel({ code, name, config_schema: s.schema ?? undefined }));
      if (m) onCreated(m);
    }}>
      <h2>New device model</h2>
      <Field label="Code" id="model-code" hint="a-z, 0-9 and _; part of every device's client id; cannot change" error={fieldErr("code")}>
        <input id="model-code" required pattern="[a-z0-9_]{1,50}" value={code} onInput={(e) => setCode(e.currentTarget.value)} />
      </Field>
      <Field label="Name" id="model-name" error={fieldErr("name")}>
        <input id="model-name" required maxLength={255} value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </Field>
      <SchemaEditor id="model-schema" value={schema} onInput={setSchema} error={fieldErr("config_schema")} />
      {act.error && !(act.error instanceof ApiError && act.error.field) ? <Problem error={act.error} /> : null}
      <button type="submit" disabled={act.busy}>Create model</button>
    </form>
  );
}

export function ModelsPage() {
  const { api, session } = useApp();
  const models = useLoad(() => api.listModels(), []);
  return (
    <section aria-labelledby="models-h">
      <h1 id="models-h">Device models</h1>
      <Problem error={models.error} />
      {models.data && (
        <table>
          <caption class="sr-only">Device models</caption>
          <thead><tr><th scope="col">Code</th><th scope="col">Name</th><th scope="col">Firmware</th><th scope="col">Schema</th><th scope="col">Updated</th></tr></thead>
          <tbody>
            {models.data.map((m) => (
              <tr key={m.id}>
                <td><Link href={`/console/models/${m.id}`}>{m.code}</Link></td>
                <td>{m.name}</td>
                <td>{m.firmware_version ?? <span class="muted">none</span>}</td>
                <td>{m.config_schema ? "yes" : <span class="muted">none</span>}</td>
                <td><When at={m.updated_at} /></td>
              </tr>
            ))}
            {models.data.length === 0 && <tr><td colSpan={5} class="muted">No models yet.</td></tr>}
          </tbody>
        </table>
      )}
      {session.isAdmin && <CreateModel onCreated={(m) => navigate(`/console/models/${m.id}`)} />}
    </section>
  );
}

function FirmwareFacts({ f }: { f: Firmware }) {
  return (
    <dl class="facts" aria-label="Parsed firmware image">
      <dt>Chip</dt><dd>{f.chip}</dd>
      <dt>Version</dt><dd>{f.version}</dd>
      <dt>Project</dt><dd>{f.project_name}</dd>
      <dt>IDF version</dt><dd>{f.idf_version}</dd>
      <dt>Secure version</dt><dd>{f.secure_version}</dd>
      <dt>SHA-256</dt><dd><code class="digest">{f.sha256}</code></dd>
      <dt>Size</dt><dd>{f.size.toLocaleString()} bytes</dd>
      <dt>Uploaded</dt><dd><When at={f.uploaded_at} /></dd>
    </dl>
  );
}

function Upload({ id, onUploaded }: { id: number; onUploaded: () => void }) {
  const { api } = useApp();
  const [file, setFile] = useState<File | null>(null);
  const [done, setDone] = useState<FirmwareUpload | null>(null);
  const [force, setForce] = useState(false);
  const [release, setRelease] = useState(true);
  const act = useAction();
  return (
    <form class="card" aria-label="Upload firmware" onSubmit={async (e) => {
      e.preventDefault();
      if (!file) return;
      const f = await act.run(() => api.uploadFirmware(id, file, force, release));
      if (f) { setDone(f); onUploaded(); }
    }}>
      <h2>Upload firmware</h2>
      <Field label="Application image (.bin)" id="fw-file" hint="an ESP-IDF app image; espmdm checks its header, checksum, SHA-256 and chip">
        <input id="fw-file" type="file" accept=".bin,application/octet-stream" onChange={(e) => setFile(e.currentTarget.files?.[0] ?? null)} />
      </Field>
      <div class="check">
        <input id="fw-release" type="checkbox" checked={release} onChange={(e) => setRelease(e.currentTarget.checked)} />
        <label for="fw-release">Release now (offer it to every device of the model); unchecked, it is only stored, to be released later</label>
      </div>
      {act.error instanceof ApiError && act.error.status === 409 ? (
        <div class="check">
          <input id="fw-force" type="checkbox" checked={force} onChange={(e) => setForce(e.currentTarget.checked)} />
          <label for="fw-force">Upload anyway (devices with anti-rollback will refuse a lower secure version)</label>
        </div>
      ) : null}
      <Problem error={act.error} />
      <button type="submit" disabled={!file || act.busy}>Upload</button>
      {done && (
        <div class="ok" role="status">
          <p>{done.released ? "Uploaded, parsed and released:" : "Uploaded and parsed; stored, not released:"}</p>
          {done.warnings?.length ? <ul class="warnings">{done.warnings.map((w) => <li>{w}</li>)}</ul> : null}
          <FirmwareFacts f={done} />
        </div>
      )}
    </form>
  );
}

function EditModel({ m, onSaved }: { m: DeviceModel; onSaved: () => void }) {
  const { api } = useApp();
  const [name, setName] = useState(m.name);
  const [schema, setSchema] = useState(m.config_schema ? JSON.stringify(m.config_schema, null, 2) : "");
  const [force, setForce] = useState(false);
  const act = useAction();
  const fieldErr = (f: string) => (act.error instanceof ApiError && act.error.field === f ? act.error.detail : undefined);
  return (
    <form class="card" aria-label="Edit the model" onSubmit={async (e) => {
      e.preventDefault();
      const s = parseSchema(schema);
      if (s.error) return;
      if (await act.run(() => api.updateModel(m.id, { name, config_schema: s.schema ?? null }, force)) !== undefined) onSaved();
    }}>
      <h2>Edit</h2>
      <Field label="Name" id="edit-model-name" error={fieldErr("name")}>
        <input id="edit-model-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
      </Field>
      <SchemaEditor id="edit-model-schema" value={schema} onInput={setSchema} error={fieldErr("config_schema")} />
      <div class="check">
        <input id="edit-model-force" type="checkbox" checked={force} onChange={(e) => setForce(e.currentTarget.checked)} />
        <label for="edit-model-force">Save even if existing device configs do not match the new schema</label>
      </div>
      {act.error && !(act.error instanceof ApiError && act.error.field) ? <Problem error={act.error} /> : null}
      <button type="submit" disabled={act.busy}>Save</button>
    </form>
  );
}

/** ReleaseCell says whether an upload is the model's released firmware,
 *  stored only (never released) or an earlier release, and lets an admin
 *  release it (a stored one, or an earlier one again: a rollback). */
function ReleaseCell({ modelId, f, admin, onReleased }: { modelId: number; f: Firmware; admin: boolean; onReleased: () => void }) {
  const { api } = useApp();
  const act = useAction();
  if (f.released) return <span class="badge" title={f.released_at ?? ""}>released</span>;
  const what = f.released_at ? <span class="muted" title={`last released ${f.released_at}`}>earlier</span> : <span class="muted">stored</span>;
  if (!admin) return what;
  return (
    <>
      {what}{" "}
      <button type="button" aria-label={`Release ${f.version}`} disabled={act.busy}
        onClick={async () => { if (await act.run(() => api.releaseFirmware(modelId, f.sha256))) onReleased(); }}>Release</button>
      <Problem error={act.error} />
    </>
  );
}

/** ELFCell says whether an upload's ELF is stored (core dumps of it can be
 *  analysed) and lets an admin upload it. */
function ELFCell({ modelId, f, admin, onUploaded }: { modelId: number; f: Firmware; admin: boolean; onUploaded: () => void }) {
  const { api } = useApp();
  const act = useAction();
  if (f.has_elf) return <span title={f.elf_sha256 ?? ""}>stored</span>;
  if (!f.elf_sha256) return <span class="muted" title="the image's app descriptor names no ELF">—</span>;
  if (!admin) return <span class="muted">not uploaded</span>;
  return (
    <>
      <label class="file">
        <span>Upload ELF…</span>
        <input type="file" accept=".elf" aria-label={`ELF of ${f.version}`} disabled={act.busy} onChange={async (e) => {
          const file = e.currentTarget.files?.[0];
          if (file && (await act.run(() => api.uploadELF(modelId, f.sha256, file)))) onUploaded();
        }} />
      </label>
      <Problem error={act.error} />
    </>
  );
}

export function ModelPage({ id }: { id: number }) {
  const { api, session } = useApp();
  const model = useLoad(() => api.getModel(id), [id]);
  const versions = useLoad(() => api.firmwareVersions(id), [id]);
  const [askDelete, setAskDelete] = useState(false);
  const del = useAction();
  const m = model.data;
  return (
    <section aria-labelledby="model-h">
      <p><Link href="/console/models">← Device models</Link></p>
      <Problem error={model.error} />
      {m && (
        <>
          <h1 id="model-h">Model {m.code}</h1>
          <dl class="facts">
            <dt>Name</dt><dd>{m.name}</dd>
            <dt>Firmware version</dt><dd>{m.firmware_version ?? <span class="muted">no firmware yet</span>}</dd>
            <dt>Created</dt><dd><When at={m.created_at} /></dd>
            <dt>Devices</dt><dd><Link href={`/console/devices?model_id=${m.id}`}>devices of this model</Link></dd>
          </dl>
          <h2>Config schema</h2>
          {m.config_schema ? <pre class="json" tabIndex={0}>{JSON.stringify(m.config_schema, null, 2)}</pre> : <p class="muted">No schema: any JSON object is accepted.</p>}
          {session.isAdmin && <EditModel key={m.updated_at} m={m} onSaved={model.reload} />}
          {session.isAdmin && <Upload id={m.id} onUploaded={() => { model.reload(); versions.reload(); }} />}
          <h2>Firmware history</h2>
          <Problem error={versions.error} />
          {versions.data && (versions.data.length === 0 ? <p class="muted">No firmware uploaded.</p> : (
            <table>
              <thead><tr><th scope="col">Version</th><th scope="col">Chip</th><th scope="col">Project</th><th scope="col">IDF</th><th scope="col">Size</th><th scope="col">SHA-256</th><th scope="col">Uploaded</th><th scope="col">Release</th><th scope="col">ELF</th></tr></thead>
              <tbody>{versions.data.map((f) => (
                <tr key={f.id}><td>{f.version}</td><td>{f.chip}</td><td>{f.project_name}</td><td>{f.idf_version}</td><td>{f.size.toLocaleString()}</td><td><code class="digest">{f.sha256.slice(0, 16)}…</code></td><td><When at={f.uploaded_at} /></td>
                  <td><ReleaseCell modelId={m.id} f={f} admin={session.isAdmin} onReleased={() => { model.reload(); versions.reload(); }} /></td>
                  <td><ELFCell modelId={m.id} f={f} admin={session.isAdmin} onUploaded={versions.reload} /></td></tr>
              ))}</tbody>
            </table>
          ))}
          <Crashes modelId={m.id} />
          {session.isAdmin && (
            <div class="danger-zone">
              <button type="button" class="danger" onClick={() => setAskDelete(true)}>Delete model</button>
              <Problem error={del.error} />
              <Confirm open={askDelete} title={`Delete model ${m.code}?`} confirm="Delete" onCancel={() => setAskDelete(false)}
                onConfirm={async () => { setAskDelete(false); if (await del.run(() => api.deleteModel(m.id).then(() => true))) navigate("/console/models"); }}>
                <p>A model that still has devices cannot be deleted.</p>
              </Confirm>
            </div>
          )}
        </>
      )}
    </section>
  );
}
