import { useEffect, useState } from "preact/hooks";
import { ApiError, type CampaignDetail, type CampaignState, type CampaignWave, type DeviceModel, type MemberState } from "../api/client";
import {
  campaignDefaults, campaignStates, duration, failureRatio, memberStateLabel, memberStates, parseTags, parseWaves, percent, polls,
  targetChoices, waveBar, waveStatus, waveSummary,
} from "../campaign";
import { navigate } from "../router";
import { Confirm, Field, Link, Problem, useAction, useApp, useLoad, When } from "./common";

/** How often a running or paused campaign's page asks again. */
export const POLL_MS = 5000;
const PAGE_SIZE = 25;

export function CampaignBadge({ state }: { state: CampaignState }) {
  return <span class={`badge campaign-${state}`}>{state}</span>;
}

function MemberBadge({ state }: { state: MemberState }) {
  return <span class={`badge member-${state}`}>{memberStateLabel(state)}</span>;
}

/** usePoll calls f every ms while on is true. */
function usePoll(f: () => void, ms: number, on: boolean) {
  useEffect(() => {
    if (!on) return;
    const t = setInterval(f, ms);
    return () => clearInterval(t);
  }, [f, ms, on]);
}

/** secondsError checks a number of seconds as the API takes it (0 to 30 days). */
function secondsError(v: string): string | undefined {
  return /^\d+$/.test(v.trim()) && Number(v) <= 2592000 ? undefined : "a whole number of seconds, at most 2592000 (30 days)";
}

function CreateCampaign({ models, onCreated }: { models: DeviceModel[]; onCreated: (c: CampaignDetail) => void }) {
  const { api } = useApp();
  const [modelId, setModelId] = useState<number | undefined>(models[0]?.id);
  const history = useLoad(() => (modelId ? api.firmwareVersions(modelId) : Promise.resolve([])), [modelId]);
  const choices = targetChoices(history.data ?? []);
  const [sha, setSha] = useState("");
  const [tags, setTags] = useState("");
  const [waves, setWaves] = useState(campaignDefaults.waves.join(", "));
  const [soak, setSoak] = useState(String(campaignDefaults.wave_soak_seconds));
  const [ratio, setRatio] = useState(String(campaignDefaults.max_failure_ratio));
  const [timeout, setTimeoutS] = useState(String(campaignDefaults.device_timeout_seconds));
  const [rollback, setRollback] = useState<boolean>(campaignDefaults.rollback_on_abort);
  const [release, setRelease] = useState<boolean>(campaignDefaults.release_on_complete);
  const [tried, setTried] = useState(false);
  const act = useAction();
  const target = choices.some((c) => c.sha256 === sha) ? sha : (choices[0]?.sha256 ?? "");
  const w = parseWaves(waves);
  const t = parseTags(tags);
  const serverErr = (f: string) => (act.error instanceof ApiError && act.error.field === f ? act.error.detail : undefined);
  const local = {
    waves: w.error,
    "selector.tags": t.error,
    wave_soak_seconds: secondsError(soak),
    max_failure_ratio: ratio.trim() !== "" && Number(ratio) >= 0 && Number(ratio) <= 1 ? undefined : "a number from 0 to 1",
    device_timeout_seconds: secondsError(timeout),
    firmware_sha256: target ? undefined : "the model has no firmware: upload one first (release=false only stores it)",
  };
  const err = (f: keyof typeof local) => (tried ? local[f] : undefined) ?? serverErr(f);
  if (models.length === 0) return <p class="muted card">Create a device model first.</p>;
  return (
    <form class="card" aria-label="Start a campaign" noValidate onSubmit={async (e) => {
      e.preventDefault();
      setTried(true);
      if (!modelId || Object.values(local).some((v) => v !== undefined)) return;
      const c = await act.run(() => api.createCampaign({
        device_model_id: modelId, firmware_sha256: target, selector: { tags: t.tags ?? [] }, waves: w.waves!,
        wave_soak_seconds: Number(soak), max_failure_ratio: Number(ratio), device_timeout_seconds: Number(timeout),
        rollback_on_abort: rollback, release_on_complete: release,
      }));
      if (c) onCreated(c);
    }}>
      <h2>New campaign</h2>
      <p class="hint">A campaign assigns the target to its members wave by wave and counts a member only when it reports the target running, confirmed (<code>ota_state</code> valid) — a download is not a success.</p>
      <Field label="Model" id="campaign-model" error={serverErr("device_model_id")}>
        <select id="campaign-model" value={modelId} onChange={(e) => { setModelId(Number(e.currentTarget.value)); setSha(""); }}>
          {models.map((m) => <option value={m.id}>{m.code} — {m.name}</option>)}
        </select>
      </Field>
      <Field label="Target firmware" id="campaign-target" error={err("firmware_sha256")} hint="any upload of the model: the released one or one only stored">
        <select id="campaign-target" value={target} disabled={!choices.length} onChange={(e) => setSha(e.currentTarget.value)}>
          {choices.map((c) => <option value={c.sha256}>{c.label}</option>)}
        </select>
      </Field>
      <Problem error={history.error} />
      <Field label="Device tags" id="campaign-tags" error={err("selector.tags")} hint="members: the model's active devices holding all of these tags (none: all its active devices); fixed at creation">
        <input id="campaign-tags" value={tags} placeholder="e.g. canary site:lab" onInput={(e) => setTags(e.currentTarget.value)} />
      </Field>
      <Field label="Waves (cumulative %)" id="campaign-waves" error={err("waves")} hint="ascending percentages of the members, ending at 100">
        <input id="campaign-waves" value={waves} onInput={(e) => setWaves(e.currentTarget.value)} />
      </Field>
      <Field label="Soak between waves (seconds)" id="campaign-soak" error={err("wave_soak_seconds")} hint="the next wave starts this long after the last success of a finished wave">
        <input id="campaign-soak" type="number" min={0} max={2592000} value={soak} onInput={(e) => setSoak(e.currentTarget.value)} />
      </Field>
      <Field label="Maximum failure ratio" id="campaign-ratio" error={err("max_failure_ratio")} hint="abort as soon as a wave's failed members are more than this share of it (0 to 1)">
        <input id="campaign-ratio" type="number" min={0} max={1} step="any" value={ratio} onInput={(e) => setRatio(e.currentTarget.value)} />
      </Field>
      <Field label="Device timeout (seconds)" id="campaign-timeout" error={err("device_timeout_seconds")} hint="a member silent this long after its assignment is timed out (not failed)">
        <input id="campaign-timeout" type="number" min={0} max={2592000} value={timeout} onInput={(e) => setTimeoutS(e.currentTarget.value)} />
      </Field>
      <div class="check">
        <input id="campaign-rollback" type="checkbox" checked={rollback} onChange={(e) => setRollback(e.currentTarget.checked)} />
        <label for="campaign-rollback">On abort, send the failed and pending members back to the released firmware</label>
      </div>
      <div class="check">
        <input id="campaign-release" type="checkbox" checked={release} onChange={(e) => setRelease(e.currentTarget.checked)} />
        <label for="campaign-release">On completion, make the target the model's released firmware</label>
      </div>
      {act.error && !(act.error instanceof ApiError && act.error.field && act.error.field in local) ? <Problem error={act.error} /> : null}
      <button type="submit" class="primary" disabled={act.busy || !modelId}>Start campaign</button>
    </form>
  );
}

export function CampaignsPage() {
  const { api, session } = useApp();
  const [modelFilter, setModelFilter] = useState<number | undefined>();
  const [stateFilter, setStateFilter] = useState<CampaignState | undefined>();
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const page = cursors.length - 1;
  const models = useLoad(() => api.listModels(), []);
  const list = useLoad(() => api.listCampaigns({ device_model_id: modelFilter, state: stateFilter, limit: PAGE_SIZE, cursor: cursors[page] }),
    [modelFilter, stateFilter, cursors[page]]);
  const modelCode = (id: number) => models.data?.find((m) => m.id === id)?.code ?? `#${id}`;
  usePoll(list.reload, POLL_MS * 2, !!list.data?.campaigns.some((c) => polls(c.state)));
  return (
    <section aria-labelledby="campaigns-h">
      <h1 id="campaigns-h">Firmware campaigns</h1>
      <p>Staged rollouts: each wave's members are assigned the target and must report it running, confirmed, before the next wave starts; too many failures in a wave abort the campaign.</p>
      <form class="filters" aria-label="Filter campaigns" onSubmit={(e) => e.preventDefault()}>
        <Field label="Model" id="campaigns-filter-model">
          <select id="campaigns-filter-model" value={modelFilter ?? ""} onChange={(e) => { setModelFilter(e.currentTarget.value ? Number(e.currentTarget.value) : undefined); setCursors([undefined]); }}>
            <option value="">all</option>
            {models.data?.map((m) => <option value={m.id}>{m.code}</option>)}
          </select>
        </Field>
        <Field label="State" id="campaigns-filter-state">
          <select id="campaigns-filter-state" value={stateFilter ?? ""} onChange={(e) => { setStateFilter((e.currentTarget.value || undefined) as CampaignState | undefined); setCursors([undefined]); }}>
            <option value="">all</option>
            {campaignStates.map((s) => <option value={s}>{s}</option>)}
          </select>
        </Field>
      </form>
      <Problem error={list.error} />
      {list.data && (
        <>
          <table>
            <caption class="sr-only">Campaigns, page {page + 1}</caption>
            <thead><tr><th scope="col">Id</th><th scope="col">Model</th><th scope="col">Target</th><th scope="col">State</th><th scope="col">Wave</th><th scope="col">Members</th><th scope="col">Created</th><th scope="col">Finished</th></tr></thead>
            <tbody>
              {list.data.campaigns.map((c) => (
                <tr key={c.id}>
                  <td><Link href={`/console/campaigns/${c.id}`}>{c.id}</Link></td>
                  <td>{modelCode(c.device_model_id)}</td>
                  <td><code>{c.firmware_version}</code></td>
                  <td><CampaignBadge state={c.state} />{c.abort_reason && <span class="muted"> {c.abort_reason}</span>}</td>
                  <td>{c.current_wave === null ? <span class="muted">not started</span> : `${c.current_wave + 1} of ${c.waves.length}`}</td>
                  <td>{c.members}</td>
                  <td><When at={c.created_at} /></td>
                  <td><When at={c.finished_at} /></td>
                </tr>
              ))}
              {list.data.campaigns.length === 0 && <tr><td colSpan={8} class="muted">No campaigns{modelFilter || stateFilter ? " match these filters" : " yet"}.</td></tr>}
            </tbody>
          </table>
          <nav class="pager" aria-label="Pages">
            <button type="button" disabled={page === 0} onClick={() => setCursors(cursors.slice(0, -1))}>← Previous</button>
            <span>Page {page + 1}</span>
            <button type="button" disabled={!list.data.next_cursor} onClick={() => setCursors([...cursors, list.data!.next_cursor ?? undefined])}>Next →</button>
          </nav>
        </>
      )}
      {session.isAdmin && models.data && <CreateCampaign models={models.data} onCreated={(c) => navigate(`/console/campaigns/${c.id}`)} />}
    </section>
  );
}

/** WaveRow is one wave: its share, its members by state as a stacked bar, its failure ratio against the campaign's maximum. */
function WaveRow({ w, c }: { w: CampaignWave; c: CampaignDetail }) {
  const status = waveStatus(w, c.current_wave);
  const ratio = failureRatio(w);
  const over = ratio > c.max_failure_ratio;
  return (
    <li class={`wave wave-${status}`} data-testid={`wave-${w.index}`}>
      <div class="wave-head">
        <strong>Wave {w.index + 1}</strong> <span class="muted">up to {w.percent} % · {status === "waiting" ? "not started" : status === "running" ? "in progress" : "settled"}</span>
        {w.started_at && <span class="muted"> · started <When at={w.started_at} /></span>}
      </div>
      <div class="wavebar" role="img" aria-label={`Wave ${w.index + 1}: ${waveSummary(w)}`}>
        {waveBar(w).map((s) => <span class={`seg member-${s.state}`} style={{ width: `${s.percent}%` }} title={`${s.count} ${memberStateLabel(s.state)}`} />)}
      </div>
      <div class="wave-counts">
        {memberStates.map((s) => <span><MemberBadge state={s} /> <strong data-testid={`wave-${w.index}-${s}`}>{w[s]}</strong></span>)}
        <span>of <strong>{w.members}</strong></span>
        <span class={over ? "over" : "muted"}>failed {percent(ratio)} (abort above {percent(c.max_failure_ratio)})</span>
      </div>
    </li>
  );
}

function Members({ id, poll }: { id: number; poll: boolean }) {
  const { api } = useApp();
  const [state, setState] = useState<MemberState | undefined>();
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const page = cursors.length - 1;
  const list = useLoad(() => api.campaignDevices(id, { state, limit: PAGE_SIZE, cursor: cursors[page] }), [id, state, cursors[page]]);
  usePoll(list.reload, POLL_MS, poll && page === 0);
  return (
    <div aria-labelledby="members-h">
      <h2 id="members-h">Members</h2>
      <div class="tabs" role="group" aria-label="Member state">
        <button type="button" aria-pressed={state === undefined} onClick={() => { setState(undefined); setCursors([undefined]); }}>all</button>
        {memberStates.map((s) => (
          <button type="button" aria-pressed={state === s} onClick={() => { setState(s); setCursors([undefined]); }}>{memberStateLabel(s)}</button>
        ))}
      </div>
      <Problem error={list.error} />
      {list.data && (
        <>
          <table>
            <caption class="sr-only">Members{state ? ` ${memberStateLabel(state)}` : ""}, page {page + 1}</caption>
            <thead><tr><th scope="col">Device</th><th scope="col">Wave</th><th scope="col">State</th><th scope="col">Assigned</th><th scope="col">Resolved</th><th scope="col">Last report</th></tr></thead>
            <tbody>
              {list.data.devices.map((m) => (
                <tr key={m.device_id}>
                  <td><Link href={`/console/devices/${m.device_id}`}><code>{m.client_id}</code></Link></td>
                  <td>{m.wave + 1}</td>
                  <td><MemberBadge state={m.state} /></td>
                  <td><When at={m.assigned_at} /></td>
                  <td>{m.resolved_at ? <When at={m.resolved_at} /> : <span class="muted">—</span>}</td>
                  <td>{m.reported ? (
                    <>
                      <code>{m.reported.firmware_version}</code>{m.reported.ota_state && <span class="muted"> {m.reported.ota_state}</span>}
                      {m.reported.ota && <span> · OTA {m.reported.ota.target}: {m.reported.ota.result.replace("_", " ")}</span>}
                    </>
                  ) : <span class="muted">none yet</span>}</td>
                </tr>
              ))}
              {list.data.devices.length === 0 && <tr><td colSpan={6} class="muted">No {state ? memberStateLabel(state) : ""} members.</td></tr>}
            </tbody>
          </table>
          <nav class="pager" aria-label="Member pages">
            <button type="button" disabled={page === 0} onClick={() => setCursors(cursors.slice(0, -1))}>← Previous</button>
            <span>Page {page + 1}</span>
            <button type="button" disabled={!list.data.next_cursor} onClick={() => setCursors([...cursors, list.data!.next_cursor ?? undefined])}>Next →</button>
          </nav>
        </>
      )}
    </div>
  );
}

export function CampaignPage({ id }: { id: number }) {
  const { api, session } = useApp();
  const campaign = useLoad(() => api.getCampaign(id), [id]);
  const model = useLoad(() => (campaign.data ? api.getModel(campaign.data.device_model_id) : Promise.resolve(undefined)), [campaign.data?.device_model_id]);
  const act = useAction();
  const [askAbort, setAskAbort] = useState(false);
  const c = campaign.data;
  const live = polls(c?.state);
  usePoll(campaign.reload, POLL_MS, live);
  const action = async (a: "pause" | "resume" | "abort") => {
    await act.run(() => api.campaignAction(id, a));
    campaign.reload(); // after a 409 too (it finished meanwhile): show what it is now
  };
  return (
    <section aria-labelledby="campaign-h">
      <p><Link href="/console/campaigns">← Campaigns</Link></p>
      <Problem error={campaign.error} />
      {c && (
        <>
          <h1 id="campaign-h">Campaign {c.id} <CampaignBadge state={c.state} /></h1>
          {c.state === "aborted" && (
            <div class="problem abort" role="alert" data-testid="abort-reason">
              <strong>Aborted</strong>
              <span class="detail">{c.abort_reason ?? "no reason recorded"}</span>
              <small>{c.rollback_on_abort ? "Failed and pending members were sent back to the released firmware; members that succeeded keep the target." : "Members keep what they were assigned (rollback on abort was off)."}</small>
            </div>
          )}
          <dl class="facts">
            <dt>Model</dt><dd><Link href={`/console/models/${c.device_model_id}`}>{model.data?.code ?? `#${c.device_model_id}`}</Link></dd>
            <dt>Target</dt><dd><code>{c.firmware_version}</code> <code class="digest">{c.firmware_sha256}</code></dd>
            <dt>Members</dt><dd>{c.members}{c.selector.tags.length ? <> with tags {c.selector.tags.map((t) => <code class="tag">{t}</code>)}</> : " (every active device of the model)"}</dd>
            <dt>Waves</dt><dd>{c.waves.map((w) => `${w} %`).join(" → ")}</dd>
            <dt>Soak · timeout</dt><dd>{duration(c.wave_soak_seconds)} between waves · a member times out after {duration(c.device_timeout_seconds)}</dd>
            <dt>Abort</dt><dd>above {percent(c.max_failure_ratio)} failed in a wave{c.rollback_on_abort ? ", then roll the failed and pending back" : ""}</dd>
            <dt>On completion</dt><dd>{c.release_on_complete ? "the target becomes the released firmware" : "the released firmware stays as it is"}</dd>
            <dt>Created</dt><dd><When at={c.created_at} /> by {c.created_by}</dd>
            {c.finished_at && <><dt>Finished</dt><dd><When at={c.finished_at} /></dd></>}
          </dl>
          {session.isAdmin && live && (
            <div class="row">
              {c.state === "running" && <button type="button" disabled={act.busy} onClick={() => action("pause")}>Pause</button>}
              {c.state === "paused" && <button type="button" disabled={act.busy} onClick={() => action("resume")}>Resume</button>}
              <button type="button" class="danger" disabled={act.busy} onClick={() => setAskAbort(true)}>Abort</button>
              <Confirm open={askAbort} title={`Abort campaign ${c.id}?`} confirm="Abort" onCancel={() => setAskAbort(false)}
                onConfirm={() => { setAskAbort(false); void action("abort"); }}>
                <p>No further member will be assigned {c.firmware_version}.{c.rollback_on_abort ? " Failed and pending members go back to the released firmware." : ""} An aborted campaign cannot be resumed.</p>
              </Confirm>
            </div>
          )}
          <Problem error={act.error} />
          <h2>Waves</h2>
          {live && <p class="muted" role="status">Refreshed every {POLL_MS / 1000} s while the campaign runs.</p>}
          <ol class="waves">{c.progress.map((w) => <WaveRow key={w.index} w={w} c={c} />)}</ol>
          <Members id={c.id} poll={live} />
        </>
      )}
    </section>
  );
}
