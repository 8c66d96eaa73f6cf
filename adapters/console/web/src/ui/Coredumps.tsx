import { useState } from "preact/hooks";
import type { Coredump } from "../api/client";
import { crashSummary, frameText } from "../coredump";
import { download, Problem, useAction, useApp, useLoad, When } from "./common";

function Analysis({ c }: { c: Coredump }) {
  const a = c.analysis;
  if (!a) return <p class="muted">{crashSummary(c)}</p>;
  return (
    <>
      <dl class="facts">
        <dt>Crashed task</dt><dd>{a.crashed_task ?? <span class="muted">not in the dump</span>}</dd>
        <dt>Panic reason</dt><dd>{a.panic_reason ?? <span class="muted">none</span>}</dd>
        <dt>Firmware</dt><dd>{c.firmware_version} <code class="digest">{c.elf_sha256?.slice(0, 16)}…</code></dd>
      </dl>
      <h4>Backtrace</h4>
      <ol class="backtrace">{a.frames.map((f) => <li><code>{f.pc}</code> {frameText(f)}</li>)}</ol>
      {a.notes.length > 0 && <ul class="muted">{a.notes.map((n) => <li>{n}</li>)}</ul>}
      <details><summary>The tool's whole output</summary><pre class="json" tabIndex={0}>{a.text}</pre></details>
    </>
  );
}

/** Coredumps lists a device's core dumps, newest first, each with its
 *  analysis (SPEC §17). */
export function Coredumps({ deviceId }: { deviceId: number }) {
  const { api, session } = useApp();
  const [cursor, setCursor] = useState<string | undefined>();
  const list = useLoad(() => api.listCoredumps(deviceId, cursor), [deviceId, cursor]);
  const act = useAction();
  const dumps = list.data?.coredumps ?? [];
  return (
    <div class="card" aria-labelledby="coredumps-h">
      <h2 id="coredumps-h">Core dumps</h2>
      <Problem error={list.error} />
      {list.data && dumps.length === 0 && <p class="muted">No core dumps: the device has not uploaded one.</p>}
      {dumps.map((c) => (
        <details key={c.id} class="coredump">
          <summary>
            <When at={c.received_at} /> <span class={`badge cd-${c.status}`}>{c.status.replace("_", " ")}</span> {crashSummary(c)}
          </summary>
          <Analysis c={c} />
          <div class="row">
            <button type="button" disabled={act.busy} onClick={() => act.run(async () => download(await api.coredumpBin(c.id), `${c.client_id}-${c.id}.core`))}>
              Download dump ({c.size.toLocaleString()} bytes)
            </button>
            {session.isAdmin && (
              <button type="button" class="danger" disabled={act.busy} onClick={async () => {
                if (await act.run(() => api.deleteCoredump(c.id).then(() => true))) list.reload();
              }}>Delete dump</button>
            )}
          </div>
        </details>
      ))}
      <Problem error={act.error} />
      {list.data?.next_cursor && <button type="button" onClick={() => setCursor(list.data?.next_cursor ?? undefined)}>Older dumps</button>}
      {cursor && <button type="button" onClick={() => setCursor(undefined)}>Newest dumps</button>}
    </div>
  );
}

/** Crashes is a model's recent crashes, grouped by the function they crashed
 *  in and the firmware version: what to look at after a release. */
export function Crashes({ modelId }: { modelId: number }) {
  const { api } = useApp();
  const crashes = useLoad(() => api.modelCrashes(modelId), [modelId]);
  const list = crashes.data?.crashes ?? [];
  return (
    <div class="card" aria-labelledby="crashes-h">
      <h2 id="crashes-h">Recent crashes</h2>
      <Problem error={crashes.error} />
      {crashes.data && (list.length === 0 ? <p class="muted">No analysed core dumps in the last {crashes.data.days} days.</p> : (
        <table>
          <caption class="muted">Analysed core dumps of the last {crashes.data.days} days</caption>
          <thead><tr><th scope="col">Crashed in</th><th scope="col">Firmware</th><th scope="col">Dumps</th><th scope="col">Latest</th></tr></thead>
          <tbody>{list.map((g) => (
            <tr key={`${g.function}@${g.firmware_version}`}>
              <td><code>{g.function ?? "unknown"}</code></td><td>{g.firmware_version}</td><td>{g.count}</td><td><When at={g.last_received_at} /></td>
            </tr>
          ))}</tbody>
        </table>
      ))}
    </div>
  );
}
