// The devices page's filter: the API's (GET /api/devices), with "not seen
// for" kept as a number of seconds and turned into seen_before when the
// list is asked for, so that a reload asks about the same span up to now.
import type { DeviceFilter } from "./api/client";

export type Filter = Omit<DeviceFilter, "seen_before" | "limit" | "cursor"> & { silent?: number };

/** silentChoices are the "not seen for" choices, in seconds. */
export const silentChoices: [number, string][] = [[3600, "1 hour"], [86400, "1 day"], [7 * 86400, "7 days"], [30 * 86400, "30 days"]];

/** apiFilter is f as the API takes it, at time now (ms since the epoch). */
export function apiFilter(f: Filter, now: number): DeviceFilter {
  const { silent, ...rest } = f;
  return silent ? { ...rest, seen_before: new Date(now - silent * 1000).toISOString() } : rest;
}
