// What the console shows of a core dump (SPEC §17): where it crashed, in
// one line, and what its status means.
import type { Coredump } from "./api/client";

type Frame = NonNullable<Coredump["analysis"]>["frames"][number];

/** frameText is "function (file:line)" with what the ELF names, else the pc. */
export function frameText(f: Frame): string {
  const fn = f.function ?? f.pc;
  if (!f.file) return fn;
  const file = f.file.split("/").pop();
  return f.line ? `${fn} (${file}:${f.line})` : `${fn} (${file})`;
}

/** crashSummary is the one line a list shows for a dump. */
export function crashSummary(c: Coredump): string {
  switch (c.status) {
    case "analysed": {
      const a = c.analysis;
      if (!a) return "analysed";
      const where = a.crash_frame ? frameText(a.crash_frame) : a.frames[0] ? frameText(a.frames[0]) : "no backtrace";
      return a.crashed_task ? `${where} in task ${a.crashed_task}` : where;
    }
    case "no_elf":
      return `waiting for the ELF ${c.elf_sha256_prefix ?? ""}…`.replace(" …", "…");
    case "pending":
      return c.reason ? `pending: ${c.reason}` : "waiting for analysis";
    default:
      return c.reason ?? c.status;
  }
}
