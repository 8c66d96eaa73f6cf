import { describe, expect, it } from "vitest";
import type { CampaignWave, Firmware } from "../../src/api/client";
import { parseRoute } from "../../src/router";
import {
  duration, failureRatio, parseTags, parseWaves, percent, polls, targetChoices, waveBar, waveStatus, waveSummary,
} from "../../src/campaign";

const wave = (w: Partial<CampaignWave>): CampaignWave => ({
  index: 0, percent: 10, members: 0, pending: 0, succeeded: 0, failed: 0, timed_out: 0, started_at: "2026-12-07T15:00:00Z", ...w,
});

const widths = (w: Partial<CampaignWave>) => waveBar(wave(w)).map((s) => [s.state, s.count, s.percent]);

describe("a wave's bar", () => {
  it("stacks succeeded, failed, timed out, pending in that order, leaving out empty states", () => {
    expect(widths({ members: 10, succeeded: 5, failed: 1, timed_out: 0, pending: 4 })).toEqual([
      ["succeeded", 5, 50], ["failed", 1, 10], ["pending", 4, 40],
    ]);
  });

  it("has no segments without members", () => {
    expect(waveBar(wave({ members: 0 }))).toEqual([]);
  });

  it("is one full segment when every member is in one state", () => {
    expect(widths({ members: 7, pending: 7 })).toEqual([["pending", 7, 100]]);
  });

  it("sums to exactly 100 by the largest remainder", () => {
    // thirds: 33.3 each, one of them gets the spare percent
    const thirds = waveBar(wave({ members: 3, succeeded: 1, failed: 1, pending: 1 }));
    expect(thirds.reduce((n, s) => n + s.percent, 0)).toBe(100);
    expect(thirds.map((s) => s.percent).sort()).toEqual([33, 33, 34]);
    for (let n = 1; n <= 60; n++) {
      for (let s = 0; s <= n; s += 3) {
        for (let f = 0; f <= n - s; f += 2) {
          const t = Math.min(1, n - s - f);
          const bar = waveBar(wave({ members: n, succeeded: s, failed: f, timed_out: t, pending: n - s - f - t }));
          expect(bar.reduce((a, x) => a + x.percent, 0)).toBe(100);
        }
      }
    }
  });

  it("never hides a state behind rounding: at least 1 % each", () => {
    const bar = waveBar(wave({ members: 1000, succeeded: 997, failed: 1, timed_out: 1, pending: 1 }));
    expect(bar.map((s) => s.percent)).toEqual([97, 1, 1, 1]);
    expect(widths({ members: 301, succeeded: 300, failed: 1 })).toEqual([["succeeded", 300, 99], ["failed", 1, 1]]);
  });

  it("says the wave in words for its text alternative", () => {
    expect(waveSummary(wave({ members: 12, succeeded: 10, failed: 1, timed_out: 1 }))).toBe("12 members: 10 succeeded, 1 failed, 1 timed out");
    expect(waveSummary(wave({ members: 1, pending: 1 }))).toBe("1 member: 1 pending");
    expect(waveSummary(wave({ members: 0 }))).toBe("no members");
  });
});

describe("a wave's failure ratio and status", () => {
  it("is failed over members, as the abort rule counts it", () => {
    expect(failureRatio({ members: 10, failed: 1 })).toBe(0.1);
    expect(failureRatio({ members: 0, failed: 0 })).toBe(0);
    expect(percent(0.1)).toBe("10 %");
    expect(percent(1 / 3)).toBe("33.3 %");
  });

  it("is waiting until started, running while members are pending, done after", () => {
    expect(waveStatus(wave({ index: 1, started_at: null }), 0)).toBe("waiting");
    expect(waveStatus(wave({ index: 0, started_at: null }), null)).toBe("waiting");
    expect(waveStatus(wave({ index: 0, members: 2, pending: 1, succeeded: 1 }), 0)).toBe("running");
    expect(waveStatus(wave({ index: 0, members: 2, succeeded: 2 }), 1)).toBe("done");
  });

  it("polls while a campaign can still change", () => {
    expect(polls("running")).toBe(true);
    expect(polls("paused")).toBe(true);
    expect(polls("aborted")).toBe(false);
    expect(polls("completed")).toBe(false);
    expect(polls(undefined)).toBe(false);
  });
});

describe("the create form", () => {
  it("reads waves as the API takes them", () => {
    expect(parseWaves("1, 10, 50, 100")).toEqual({ waves: [1, 10, 50, 100] });
    expect(parseWaves("100")).toEqual({ waves: [100] });
    expect(parseWaves(" 5;25 100 ")).toEqual({ waves: [5, 25, 100] });
    expect(parseWaves("").error).toMatch(/at least one/);
    expect(parseWaves("10, 50").error).toMatch(/last wave is 100/);
    expect(parseWaves("10, 10, 100").error).toMatch(/larger/);
    expect(parseWaves("50, 10, 100").error).toMatch(/larger/);
    expect(parseWaves("0, 100").error).toMatch(/from 1 to 100/);
    expect(parseWaves("10, 101").error).toMatch(/from 1 to 100/);
    expect(parseWaves("2.5, 100").error).toMatch(/whole number/);
  });

  it("reads tags as the API takes them", () => {
    expect(parseTags("")).toEqual({ tags: [] });
    expect(parseTags("canary, site:lab  canary")).toEqual({ tags: ["canary", "site:lab"] });
    expect(parseTags("Canary").error).toMatch(/not a tag/);
    expect(parseTags("a".repeat(65)).error).toMatch(/not a tag/);
    expect(parseTags(Array.from({ length: 33 }, (_, i) => `t${i}`).join(" ")).error).toMatch(/at most 32/);
  });

  it("offers the model's uploads newest first, released and stored alike", () => {
    const fw = (id: number, version: string, at: string, released?: boolean) =>
      ({ id, version, uploaded_at: at, sha256: `${id}`.repeat(64).slice(0, 64), released }) as Firmware & { released?: boolean };
    expect(targetChoices([fw(1, "1.0.0", "2026-01-01T00:00:00Z", true), fw(2, "2.0.0", "2026-02-01T00:00:00Z", false)])).toEqual([
      { sha256: "2".repeat(64), label: "2.0.0 · stored · 222222222222…" },
      { sha256: "1".repeat(64), label: "1.0.0 · released · 111111111111…" },
    ]);
    expect(targetChoices([fw(3, "3.0.0", "2026-03-01T00:00:00Z")])[0].label).toBe("3.0.0 · 333333333333…");
  });

  it("says durations briefly", () => {
    expect(duration(600)).toBe("10 min");
    expect(duration(3600)).toBe("1 h");
    expect(duration(86400)).toBe("1 d");
    expect(duration(90)).toBe("90 s");
    expect(duration(0)).toBe("0 s");
  });
});

describe("routes", () => {
  it("has the campaigns pages", () => {
    expect(parseRoute("/console/campaigns")).toEqual({ page: "campaigns" });
    expect(parseRoute("/console/campaigns/12")).toEqual({ page: "campaign", id: 12 });
    expect(parseRoute("/console/campaigns/x")).toEqual({ page: "notfound", path: "/console/campaigns/x" });
  });
});
