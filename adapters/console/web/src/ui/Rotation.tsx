import { useState } from "preact/hooks";
import { Link, Problem, StateBadge, stateNames, useAction, useApp, useLoad, When } from "./common";

const groups = ["critical", "warning", "healthy", "inactive"] as const;
type Group = (typeof groups)[number];

export function RotationPage() {
  const { api, session } = useApp();
  const status = useLoad(() => api.rotationStatus(), []);
  const [group, setGroup] = useState<Group>("critical");
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const page = cursors.length - 1;
  const dash = useLoad(() => api.rotationDashboard({ group, limit: 25, cursor: cursors[page] }), [group, cursors[page]]);
  const act = useAction();
  const [note, setNote] = useState("");
  const s = status.data;
  return (
    <section aria-labelledby="rotation-h">
      <h1 id="rotation-h">Credential rotation</h1>
      <Problem error={status.error} />
      {s && (
        <div class="card" aria-label="Rotation status">
          <h2>Status</h2>
          <ul class="counts">
            {stateNames.map((st) => <li><StateBadge state={st} /> <strong data-testid={`count-${st}`}>{s.counts_by_state[st]}</strong></li>)}
            <li><span class="badge">inactive</span> <strong>{s.inactive}</strong></li>
          </ul>
          <dl class="facts">
            <dt>Mode</dt><dd>{s.mode || "not resolved yet"}</dd>
            <dt>Next scheduled run</dt><dd><When at={s.next_scheduled_rotation} /></dd>
            <dt>Last completion</dt><dd><When at={s.last_rotation_completed_at} /></dd>
            <dt>Worker</dt><dd>{s.lease_holder ?? <span class="muted">none holds the lease</span>}</dd>
            <dt>In flight</dt><dd>{s.in_flight.length ? s.in_flight.map((id) => <Link href={`/console/devices/${id}`}>{` ${id}`}</Link>) : "none"}</dd>
          </dl>
          {session.isAdmin && (
            <div class="row">
              <button type="button" disabled={act.busy} onClick={async () => {
                const r = await act.run(() => api.triggerRotation());
                if (r) { setNote(`${r.queued_count} devices queued.`); status.reload(); dash.reload(); }
              }}>Rotate all active devices now</button>
              {note && <span role="status">{note}</span>}
            </div>
          )}
          <Problem error={act.error} />
        </div>
      )}
      <h2>Dashboard</h2>
      <div class="tabs" role="group" aria-label="Dashboard group">
        {groups.map((g) => (
          <button type="button" aria-pressed={g === group} onClick={() => { setGroup(g); setCursors([undefined]); }}>
            {g}{dash.data && dash.data.counts ? ` (${dash.data.counts[g]})` : ""}
          </button>
        ))}
      </div>
      <Problem error={dash.error} />
      {dash.data && (
        <>
          <table>
            <caption class="sr-only">{group} devices</caption>
            <thead><tr><th scope="col">Device</th><th scope="col">State</th><th scope="col">Secret age (days)</th><th scope="col">Last attempt</th><th scope="col">Last seen</th>{session.isAdmin && <th scope="col"><span class="sr-only">Actions</span></th>}</tr></thead>
            <tbody>
              {dash.data.devices.map((d) => (
                <tr key={d.id}>
                  <td><Link href={`/console/devices/${d.id}`}><code>{d.client_id}</code></Link></td>
                  <td><StateBadge state={d.rotation_state} /></td>
                  <td>{d.secret_age_days.toFixed(1)}</td>
                  <td><When at={d.last_rotation_attempt_at} /></td>
                  <td><When at={d.last_seen_at} /></td>
                  {session.isAdmin && <td><button type="button" disabled={act.busy || group === "inactive"} onClick={async () => {
                    const r = await act.run(() => api.rotateDevice(d.id));
                    if (r) { setNote(`Device ${d.id}: ${r.status === "queued" ? "queued" : "already pending"}.`); dash.reload(); status.reload(); }
                  }}>Rotate</button></td>}
                </tr>
              ))}
              {dash.data.devices.length === 0 && <tr><td colSpan={6} class="muted">No {group} devices.</td></tr>}
            </tbody>
          </table>
          <nav class="pager" aria-label="Dashboard pages">
            <button type="button" disabled={page === 0} onClick={() => setCursors(cursors.slice(0, -1))}>← Previous</button>
            <span>Page {page + 1}</span>
            <button type="button" disabled={!dash.data.next_cursor} onClick={() => setCursors([...cursors, dash.data!.next_cursor ?? undefined])}>Next →</button>
          </nav>
        </>
      )}
    </section>
  );
}
