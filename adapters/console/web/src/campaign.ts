// What the console makes of firmware campaigns (SPEC §16): a wave's bar, the
// create form's fields as the API takes them, and when the page polls. Pure
// functions, tested without a browser.
import type { CampaignState, CampaignWave, Firmware, MemberState } from "./api/client";

export const campaignStates: CampaignState[] = ["running", "paused", "aborted", "completed"];
export const memberStates: MemberState[] = ["pending", "succeeded", "failed", "timed_out"];

/** memberStateLabel says a member state in words. */
export function memberStateLabel(s: MemberState): string {
  return s === "timed_out" ? "timed out" : s;
}

/** One part of a wave's bar: a member state, its count, its width in percent. */
export interface Segment {
  state: MemberState;
  count: number;
  /** percent of the bar; the widths of a wave with members sum to exactly 100 */
  percent: number;
}

/** The order of a bar's parts: the settled ones first, pending last. */
const barOrder: MemberState[] = ["succeeded", "failed", "timed_out", "pending"];

/**
 * waveBar is a wave's members as a stacked bar: succeeded, failed, timed out
 * and pending, each as a share of the wave's members. Widths are whole percents
 * by the largest remainder, so that they sum to 100 and a state with members
 * never disappears behind rounding (at least 1 %); states without members are
 * left out. A wave without members has no segments.
 */
export function waveBar(w: Pick<CampaignWave, "members" | "pending" | "succeeded" | "failed" | "timed_out">): Segment[] {
  const counts = barOrder.map((state) => ({ state, count: Math.max(0, w[state]) })).filter((s) => s.count > 0);
  const total = counts.reduce((n, s) => n + s.count, 0);
  if (total === 0) return [];
  // Every present state gets at least 1 %; the rest is shared by the largest remainder.
  const floors = counts.map((s) => Math.max(1, Math.floor((100 * s.count) / total)));
  let left = 100 - floors.reduce((a, b) => a + b, 0);
  const order = counts
    .map((s, i) => ({ i, rem: (100 * s.count) / total - Math.floor((100 * s.count) / total) }))
    .sort((a, b) => b.rem - a.rem || a.i - b.i);
  for (let k = 0; left > 0; k = (k + 1) % order.length, left--) floors[order[k].i]++;
  // Too many at the 1 % minimum: take back from the widest.
  while (left < 0) {
    const widest = floors.indexOf(Math.max(...floors));
    floors[widest]--;
    left++;
  }
  return counts.map((s, i) => ({ ...s, percent: floors[i] }));
}

/** waveSummary says a wave's progress in words (the bar's text alternative). */
export function waveSummary(w: CampaignWave): string {
  if (w.members === 0) return "no members";
  const parts = barOrder.filter((s) => w[s] > 0).map((s) => `${w[s]} ${memberStateLabel(s)}`);
  return `${w.members} ${w.members === 1 ? "member" : "members"}: ${parts.join(", ")}`;
}

/** failureRatio is the wave's failed members over its members (0 without members). */
export function failureRatio(w: Pick<CampaignWave, "members" | "failed">): number {
  return w.members > 0 ? w.failed / w.members : 0;
}

/** percent says a ratio in [0, 1] as a percentage with at most one decimal. */
export function percent(r: number): string {
  const p = Math.round(r * 1000) / 10;
  return `${p} %`;
}

/** waveStatus is what a wave is doing: not started, in progress (pending members), or done. */
export function waveStatus(w: CampaignWave, current: number | null): "waiting" | "running" | "done" {
  if (w.started_at === null || current === null || w.index > current) return "waiting";
  return w.pending > 0 ? "running" : "done";
}

/** polls says whether the campaign page refreshes itself: while the campaign can still change. */
export function polls(state: CampaignState | undefined): boolean {
  return state === "running" || state === "paused";
}

/** parseWaves reads "1, 10, 50, 100" as the API wants waves: integers from 1 to 100, strictly ascending, ending at 100. */
export function parseWaves(text: string): { waves?: number[]; error?: string } {
  const parts = text.split(/[\s,;]+/).filter((p) => p !== "");
  if (parts.length === 0) return { error: "at least one wave (the last is 100)" };
  const waves: number[] = [];
  for (const p of parts) {
    if (!/^\d+$/.test(p)) return { error: `"${p}" is not a whole number` };
    const n = Number(p);
    if (n < 1 || n > 100) return { error: `${n} is not a percentage from 1 to 100` };
    if (waves.length && n <= waves[waves.length - 1]) return { error: "each wave is a larger percentage than the one before (they are cumulative)" };
    waves.push(n);
  }
  if (waves[waves.length - 1] !== 100) return { error: "the last wave is 100 (every member)" };
  return { waves };
}

export const TAG_PATTERN = /^[a-z0-9_.:-]{1,64}$/;
export const MAX_TAGS = 32;

/** parseTags reads tags separated by commas or spaces, as the API wants them (each ^[a-z0-9_.:-]{1,64}$, at most 32, no repeats). */
export function parseTags(text: string): { tags?: string[]; error?: string } {
  const tags = [...new Set(text.split(/[\s,]+/).filter((t) => t !== ""))];
  const bad = tags.find((t) => !TAG_PATTERN.test(t));
  if (bad !== undefined) return { error: `"${bad}" is not a tag: 1 to 64 of a-z, 0-9, _ . : -` };
  if (tags.length > MAX_TAGS) return { error: `at most ${MAX_TAGS} tags` };
  return { tags };
}

/** An upload of the model's history as the create form offers it. */
export interface TargetChoice {
  sha256: string;
  label: string;
}

/**
 * targetChoices is a model's firmware history as campaign targets, newest
 * first: the released one and the ones only stored (for a campaign to stage)
 * alike, each labelled with its version, its state and the start of its digest.
 * `released` is read when the server sends it (an upload is released or only
 * stored since §16); without it every upload is labelled by its version alone.
 */
export function targetChoices(history: (Firmware & { released?: boolean })[]): TargetChoice[] {
  return [...history]
    .sort((a, b) => b.uploaded_at.localeCompare(a.uploaded_at) || b.id - a.id)
    .map((f) => {
      const state = f.released === undefined ? "" : f.released ? " · released" : " · stored";
      return { sha256: f.sha256, label: `${f.version}${state} · ${f.sha256.slice(0, 12)}…` };
    });
}

/** Defaults of POST /api/campaigns (SPEC §16). */
export const campaignDefaults = {
  waves: [1, 10, 50, 100],
  wave_soak_seconds: 600,
  max_failure_ratio: 0.1,
  device_timeout_seconds: 3600,
  rollback_on_abort: true,
  release_on_complete: false,
} as const;

/** duration says a number of seconds briefly (600 → "10 min"). */
export function duration(s: number): string {
  if (s === 0) return "0 s";
  if (s % 86400 === 0) return `${s / 86400} d`;
  if (s % 3600 === 0) return `${s / 3600} h`;
  if (s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}
