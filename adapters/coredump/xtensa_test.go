package coredump_test

import (
	"debug/elf"
	"encoding/binary"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/coredump"
	"github.com/espmdm/espmdm/core/model"
)

// coreSeg is one segment of a core file built by buildCore.
type coreSeg struct {
	typ  elf.ProgType
	addr uint32
	data []byte
}

// note encodes one ELF note.
func note(name string, typ uint32, desc []byte) []byte {
	pad := func(b []byte) []byte {
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	le := binary.LittleEndian
	b := le.AppendUint32(nil, uint32(len(name)+1))
	b = le.AppendUint32(b, uint32(len(desc)))
	b = le.AppendUint32(b, typ)
	b = append(b, pad(append([]byte(name), 0))...)
	return append(b, pad(append([]byte(nil), desc...))...)
}

// buildCore lays out a 32-bit little-endian ELF core file of machine m.
func buildCore(m elf.Machine, segs []coreSeg) []byte {
	le := binary.LittleEndian
	hdr := make([]byte, 52)
	copy(hdr, "\x7fELF\x01\x01\x01")
	le.PutUint16(hdr[16:], uint16(elf.ET_CORE))
	le.PutUint16(hdr[18:], uint16(m))
	le.PutUint32(hdr[20:], 1)
	le.PutUint32(hdr[28:], 52) // phoff
	le.PutUint16(hdr[40:], 52)
	le.PutUint16(hdr[42:], 32)
	le.PutUint16(hdr[44:], uint16(len(segs)))
	out := hdr
	off := 52 + 32*len(segs)
	for _, s := range segs {
		ph := make([]byte, 32)
		le.PutUint32(ph[0:], uint32(s.typ))
		le.PutUint32(ph[4:], uint32(off))
		le.PutUint32(ph[8:], s.addr)
		le.PutUint32(ph[12:], s.addr)
		le.PutUint32(ph[16:], uint32(len(s.data)))
		le.PutUint32(ph[20:], uint32(len(s.data)))
		le.PutUint32(ph[24:], 6)
		out = append(out, ph...)
		off += len(s.data)
	}
	for _, s := range segs {
		out = append(out, s.data...)
	}
	return out
}

// xtensaDump builds an ESP32 (Xtensa) core dump in ESP-IDF's layout (see
// xtensa.go) whose crashed task stopped in the C3 ELF's panic_abort, called
// from esp_system_abort, abort and fail_once: the C3 ELF stands in for an
// Xtensa one, since naming frames from an ELF does not depend on its
// architecture. The TCB is the C3 dump's, so the task is named "main".
func xtensaDump(t *testing.T) []byte {
	t.Helper()
	le := binary.LittleEndian
	const tcbAddr, stackTop = 0x3fc8ec30, 0x3ffb5000
	c3 := readFile(t, c3Dump)
	info, err := model.ReadCoredumpInfo(c3)
	if err != nil {
		t.Fatal(err)
	}
	c3core, err := elf.NewFile(strings.NewReader(string(c3[info.ELFOffset : info.ELFOffset+info.ELFLength])))
	if err != nil {
		t.Fatal(err)
	}
	var tcb []byte
	for _, p := range c3core.Progs {
		if p.Type == elf.PT_LOAD && p.Vaddr == tcbAddr {
			tcb = make([]byte, p.Filesz)
			if _, err := p.ReadAt(tcb, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if tcb == nil {
		t.Fatal("the C3 dump has no segment at its TCB")
	}

	// The stack: each frame's base save area, 16 bytes below its stack
	// pointer, holds the caller's return address (window bits on top) and
	// stack pointer.
	stack := make([]byte, 0x100)
	sp1, sp2, sp3 := uint32(stackTop+0x20), uint32(stackTop+0x60), uint32(stackTop+0xA0)
	save := func(sp, ra, nextSP uint32) {
		le.PutUint32(stack[sp-16-stackTop:], ra)
		le.PutUint32(stack[sp-12-stackTop:], nextSP)
	}
	save(sp1, 0x803887b8, sp2) // abort
	save(sp2, 0x82009354, sp3) // fail_once
	save(sp3, 0, sp3+0x40)     // the end

	// NT_PRSTATUS: pr_pid at 24, pr_reg at 72 (pc, ..., a0 at word 64, a1 at 65).
	prstatus := make([]byte, 72+128*4+4)
	le.PutUint32(prstatus[24:], tcbAddr)
	le.PutUint32(prstatus[72:], 0x40380698)      // pc: panic_abort
	le.PutUint32(prstatus[72+64*4:], 0x8038368e) // a0: back into esp_system_abort
	le.PutUint32(prstatus[72+65*4:], sp1)        // a1
	infoDesc := append(le.AppendUint32(nil, 0x0102), "7d946a8e8"...)
	infoDesc = append(infoDesc, make([]byte, 64-9)...)
	extra := le.AppendUint32(nil, tcbAddr)
	extra = le.AppendUint32(le.AppendUint32(extra, 232), 29) // EXCCAUSE StoreProhibited
	extra = le.AppendUint32(le.AppendUint32(extra, 238), 0)  // EXCVADDR
	notes := note("CORE", uint32(elf.NT_PRSTATUS), prstatus)
	espNotes := note("ESP_CORE_DUMP_INFO", 8266, infoDesc)
	espNotes = append(espNotes, note("ESP_EXTRA_INFO", 677, extra)...)
	espNotes = append(espNotes, note("ESP_PANIC_DETAILS", 679, []byte("abort() was called at PC 0x42009351 on core 0"))...)
	core := buildCore(elf.EM_XTENSA, []coreSeg{
		{elf.PT_NOTE, 0, notes},
		{elf.PT_LOAD, tcbAddr, tcb},
		{elf.PT_LOAD, stackTop, stack},
		{elf.PT_NOTE, 0, espNotes},
	})

	// The raw partition layout, v1.2: tot_len, version (chip 0, esp32),
	// task count, TCB size, segment count, chip revision; the ELF; CRC-32.
	dump := le.AppendUint32(nil, uint32(24+len(core)+4))
	dump = le.AppendUint32(dump, 0<<16|0x0102)
	dump = append(dump, make([]byte, 16)...)
	dump = append(dump, core...)
	return le.AppendUint32(dump, crc32.ChecksumIEEE(dump))
}

// An Xtensa dump: esp-coredump with gdb-multiarch gives no backtrace (here
// it even stops, the stand-in ELF being RISC-V), and the adapter's own
// stack walk names the frames.
func TestAnalyzeXtensaWalksTheStack(t *testing.T) {
	cfg := toolConfig(t)
	got, err := analyze(t, coredump.New(cfg), xtensaDump(t), c3ELF)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", got.Text)
	want := []struct {
		pc uint32
		fn string
	}{{0x40380698, "panic_abort"}, {0x4038368e, "esp_system_abort"}, {0x403887b8, "abort"}, {0x42009354, "fail_once"}}
	if len(got.Frames) != len(want) {
		t.Fatalf("frames %+v, want %d", got.Frames, len(want))
	}
	for i, w := range want {
		if f := got.Frames[i]; f.PC != w.pc || f.Function != w.fn || f.File == "" || f.Line == 0 {
			t.Errorf("frame %d = %+v, want %s at 0x%x with a file and line", i, f, w.fn, w.pc)
		}
	}
	crash, ok := got.CrashFrame()
	if !ok || crash.Function != "fail_once" || !strings.HasSuffix(crash.File, "test_core_dump.c") || crash.Line != 14 {
		t.Errorf("crash frame %+v, want fail_once at test_core_dump.c:14", crash)
	}
	if got.Chip != "esp32" || got.CrashedTask != "main" || got.PanicReason != "abort() was called at PC 0x42009351 on core 0" {
		t.Errorf("chip %q, task %q, reason %q", got.Chip, got.CrashedTask, got.PanicReason)
	}
	for _, want := range []string{"ESPMDM: CRASHED TASK BACKTRACE", "EXCCAUSE 0x1d (StoreProhibited)", "#3  0x42009354 in fail_once at "} {
		if !strings.Contains(got.Text, want) {
			t.Errorf("the text lacks %q", want)
		}
	}
	if len(got.Notes) != 2 || !strings.Contains(got.Notes[0], "Xtensa") || !strings.Contains(got.Notes[1], "esp-coredump exited with status 1") {
		t.Errorf("notes %q, want the Xtensa note and the tool's exit", got.Notes)
	}
	assertNothingLeft(t, cfg.TempDir)
}
