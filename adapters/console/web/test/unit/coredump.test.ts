import { describe, expect, it } from "vitest";
import type { Coredump } from "../../src/api/client";
import { crashSummary, frameText } from "../../src/coredump";

const base: Coredump = {
  id: 1, device_id: 2, client_id: "iotdevice-m-k", device_model_id: 3, received_at: "2026-12-07T10:00:00Z",
  size: 3224, sha256: "a".repeat(64), chip: "esp32c3", format: "elf", elf_sha256_prefix: "7d946a8e8",
  status: "pending", reason: null, elf_sha256: null, firmware_version: null, analysed_at: null, analysis: null,
};

describe("frameText", () => {
  it("names function, file and line", () => {
    expect(frameText({ pc: "0x42009351", function: "fail_once", file: "/src/main/test_core_dump.c", line: 14 }))
      .toBe("fail_once (test_core_dump.c:14)");
  });
  it("falls back to the pc", () => {
    expect(frameText({ pc: "0x40000000", function: null, file: null, line: null })).toBe("0x40000000");
  });
});

describe("crashSummary", () => {
  it("says where an analysed dump crashed", () => {
    const c: Coredump = { ...base, status: "analysed", analysis: {
      crashed_task: "main", panic_reason: "abort()", notes: [], text: "",
      crash_frame: { pc: "0x42009351", function: "fail_once", file: "test_core_dump.c", line: 14 },
      frames: [{ pc: "0x40380000", function: "panic_abort", file: null, line: null }],
    } };
    expect(crashSummary(c)).toBe("fail_once (test_core_dump.c:14) in task main");
  });
  it("says which ELF a no_elf dump waits for", () => {
    expect(crashSummary({ ...base, status: "no_elf" })).toBe("waiting for the ELF 7d946a8e8…");
  });
  it("gives a failed dump's reason", () => {
    expect(crashSummary({ ...base, status: "failed", reason: "not a core dump: 5 bytes" })).toBe("not a core dump: 5 bytes");
  });
  it("gives what holds a pending dump up", () => {
    expect(crashSummary({ ...base, reason: "esp-coredump cannot be run" })).toBe("pending: esp-coredump cannot be run");
    expect(crashSummary(base)).toBe("waiting for analysis");
  });
});
