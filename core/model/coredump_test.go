package model_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
)

// c3ELFSHA256 is the SHA-256 of the ESP32-C3 application ELF the test dump
// came from (adapters/coredump/testdata/esp32c3.elf).
const c3ELFSHA256 = "7d946a8e8cd5e4196dca452f6aaea74a9569861d45e7861eb1a11c063d042472"

// c3Dump is the real ESP32-C3 dump (Espressif's esp-coredump tests,
// Apache-2.0): the raw coredump partition content, ELF format v1.2 with a
// CRC-32.
func c3Dump(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/esp32c3.coredump")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withCRC fixes the CRC-32 at the end of a CRC-checked dump of length n.
func withCRC(b []byte) []byte {
	n := binary.LittleEndian.Uint32(b)
	binary.LittleEndian.PutUint32(b[n-4:], crc32.ChecksumIEEE(b[:n-4]))
	return b
}

// asSHA256V22 rewrites a v1.2 (CRC-32, 24-byte header) dump as v1.4
// (SHA-256, 12-byte header): the same ELF in ESP-IDF 5.x's newest layout.
func asSHA256V22(b []byte) []byte {
	n := binary.LittleEndian.Uint32(b)
	elf := b[24 : n-4]
	ver := binary.LittleEndian.Uint32(b[4:])&0xFFFF0000 | 0x0104
	out := make([]byte, 12, 12+len(elf)+32)
	binary.LittleEndian.PutUint32(out[0:], uint32(12+len(elf)+32))
	binary.LittleEndian.PutUint32(out[4:], ver)
	binary.LittleEndian.PutUint32(out[8:], 3) // chip revision
	out = append(out, elf...)
	sum := sha256.Sum256(out)
	return append(out, sum[:]...)
}

func TestReadCoredumpInfoRealDump(t *testing.T) {
	dump := c3Dump(t)
	want := model.CoredumpInfo{
		Chip: "esp32c3", ChipID: 5, Format: model.CoredumpFormatELF, Version: 0x0102,
		ELFSHA256Prefix: "7d946a8e8",
		PanicReason:     "abort() was called at PC 0x42009351 on core 0",
		ChecksumValid:   true, Length: len(dump), ELFOffset: 24, ELFLength: len(dump) - 24 - 4,
	}
	got, err := model.ReadCoredumpInfo(dump)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if !got.MatchesELF(c3ELFSHA256) {
		t.Errorf("MatchesELF(the C3 ELF's SHA-256) = false")
	}
	if got.MatchesELF(strings.Repeat("0", 64)) {
		t.Errorf("MatchesELF(zeros) = true")
	}

	// The rest of the partition (erased flash) is not part of the dump.
	padded := append(append([]byte(nil), dump...), bytes.Repeat([]byte{0xFF}, 4096)...)
	if got, err := model.ReadCoredumpInfo(padded); err != nil || got != want {
		t.Errorf("with the partition's 0xFF tail: got %+v, %v; want %+v", got, err, want)
	}

	// A flipped bit in the data leaves everything readable but the checksum.
	corrupt := append([]byte(nil), dump...)
	corrupt[len(dump)-100] ^= 0x01
	got, err = model.ReadCoredumpInfo(corrupt)
	if err != nil || got.ChecksumValid || got.ELFSHA256Prefix != want.ELFSHA256Prefix {
		t.Errorf("corrupt data: got %+v, %v; want ChecksumValid false and the prefix", got, err)
	}

	// The same ELF core in the v1.4 layout (12-byte header, SHA-256).
	v22 := asSHA256V22(dump)
	got, err = model.ReadCoredumpInfo(v22)
	if err != nil || !got.ChecksumValid || got.Version != 0x0104 || got.ELFOffset != 12 ||
		got.ELFSHA256Prefix != want.ELFSHA256Prefix || got.PanicReason != want.PanicReason {
		t.Errorf("v1.4 layout: got %+v, %v", got, err)
	}
	v22[20] ^= 0x01
	if got, err := model.ReadCoredumpInfo(v22); err != nil || got.ChecksumValid {
		t.Errorf("v1.4 with a flipped bit: got ChecksumValid %v, %v; want false", got.ChecksumValid, err)
	}
}

func TestReadCoredumpInfoBinaryFormat(t *testing.T) {
	// A legacy binary dump (v0.2: tot_len, version, task count, TCB size,
	// segment count; data; CRC-32) names no ELF.
	b := make([]byte, 20+8+4)
	binary.LittleEndian.PutUint32(b[0:], uint32(len(b)))
	binary.LittleEndian.PutUint32(b[4:], 9<<16|0x0002)
	got, err := model.ReadCoredumpInfo(withCRC(b))
	if err != nil {
		t.Fatal(err)
	}
	if got.Chip != "esp32s3" || !got.Xtensa || got.Format != model.CoredumpFormatBinary ||
		got.ELFSHA256Prefix != "" || !got.ChecksumValid || got.MatchesELF(c3ELFSHA256) {
		t.Errorf("got %+v", got)
	}
}

func TestReadCoredumpInfoRejects(t *testing.T) {
	dump := c3Dump(t)
	elf := 24 // the ELF core's offset in the v1.2 dump
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), dump...)) }
	put32 := func(b []byte, off int, v uint32) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
	// The ESP_CORE_DUMP_INFO note's hex SHA-256 starts right after its
	// version word.
	shaOff := bytes.Index(dump, []byte("7d946a8e8"))
	if shaOff < 0 {
		t.Fatal("the dump does not hold its ELF SHA-256 prefix")
	}
	tests := []struct {
		name string
		dump []byte
		msg  string
	}{
		{"empty", nil, "shorter than a core dump header"},
		{"header only", dump[:7], "shorter than a core dump header"},
		{"text", []byte("this is not a core dump at all"), "unknown core dump version"},
		{"erased flash", bytes.Repeat([]byte{0xFF}, 4096), "unknown core dump version"},
		{"unknown version", mutate(func(b []byte) []byte { return put32(b, 4, 5<<16|0x0199) }), "unknown core dump version 0x0199"},
		{"unknown chip", mutate(func(b []byte) []byte { return put32(b, 4, 7<<16|0x0102) }), "unknown chip id 7"},
		{"Xtensa chip, RISC-V ELF", mutate(func(b []byte) []byte { return put32(b, 4, 0<<16|0x0102) }), "does not fit chip esp32"},
		{"truncated", dump[:len(dump)-1], "outside"},
		{"length too small", mutate(func(b []byte) []byte { return put32(b, 0, 10) }), "outside"},
		{"no ELF magic", mutate(func(b []byte) []byte { b[elf] = 0; return b }), "no ELF magic"},
		{"64-bit ELF", mutate(func(b []byte) []byte { b[elf+4] = 2; return b }), "32-bit"},
		{"not a core", mutate(func(b []byte) []byte { b[elf+16] = 2; return b }), "not a core file"},
		{"program headers outside", mutate(func(b []byte) []byte { return put32(b, elf+28, 0xFFFFFF00) }), "program headers"},
		{"note outside", mutate(func(b []byte) []byte { return put32(b, elf+52+7*32+16, 0x7FFFFFFF) }), "note segment"},
		{"SHA-256 not hex", mutate(func(b []byte) []byte { b[shaOff+2] = 'X'; return b }), "not lowercase hex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := model.ReadCoredumpInfo(tt.dump)
			var fe *model.CoredumpFormatError
			if !errors.Is(err, model.ErrCoredumpFormat) || !errors.As(err, &fe) {
				t.Fatalf("got %v, want a *CoredumpFormatError", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got %q, want it to say %q", err, tt.msg)
			}
		})
	}
}

func TestCoredumpStatusValid(t *testing.T) {
	for _, s := range []model.CoredumpStatus{model.CoredumpPending, model.CoredumpAnalysed, model.CoredumpNoELF, model.CoredumpFailed} {
		if !s.Valid() {
			t.Errorf("%q.Valid() = false", s)
		}
	}
	if model.CoredumpStatus("done").Valid() {
		t.Errorf(`"done".Valid() = true`)
	}
}

func TestCrashFrameSkipsThePanicPath(t *testing.T) {
	a := model.CoredumpAnalysis{Frames: []model.CoredumpFrame{
		{PC: 0x40380698, Function: "panic_abort"},
		{PC: 0x4038368e, Function: "esp_system_abort"},
		{PC: 0x403887b8, Function: "abort"},
		{PC: 0x42009354, Function: "fail_once", File: "main/test_core_dump.c", Line: 14},
		{PC: 0x400485e4},
	}}
	got, ok := a.CrashFrame()
	if !ok || got.Function != "fail_once" || got.Line != 14 {
		t.Errorf("CrashFrame() = %+v, %v; want fail_once at line 14", got, ok)
	}
	if _, ok := (model.CoredumpAnalysis{Frames: []model.CoredumpFrame{{PC: 1}}}).CrashFrame(); ok {
		t.Errorf("CrashFrame() of frames without functions: ok")
	}
}

func TestCoredumpErrors(t *testing.T) {
	tool := &model.CoredumpToolError{Tool: "gdb", Path: "gdb-multiarch", Err: os.ErrNotExist}
	if !errors.Is(tool, model.ErrCoredumpToolMissing) || !errors.Is(tool, os.ErrNotExist) || errors.Is(tool, model.ErrCoredumpFailed) {
		t.Errorf("%v matches the wrong errors", tool)
	}
	failed := &model.CoredumpFailedError{Reason: "wrong ELF", Err: model.ErrCoredumpWrongELF}
	if !errors.Is(failed, model.ErrCoredumpFailed) || !errors.Is(failed, model.ErrCoredumpWrongELF) || errors.Is(failed, model.ErrCoredumpToolMissing) {
		t.Errorf("%v matches the wrong errors", failed)
	}
}

func FuzzReadCoredumpInfo(f *testing.F) {
	dump := c3Dump(f)
	f.Add(dump)
	f.Add(asSHA256V22(dump))
	f.Add(dump[:200])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := model.ReadCoredumpInfo(data)
		if err != nil {
			var fe *model.CoredumpFormatError
			if !errors.Is(err, model.ErrCoredumpFormat) || !errors.As(err, &fe) || fe.Off < 0 || fe.Off > int64(len(data)) {
				t.Fatalf("error %v is not a *CoredumpFormatError with an offset in the dump", err)
			}
			return
		}
		if info.Chip == "" || info.Length > len(data) || info.Length < 12 {
			t.Fatalf("info %+v for %d bytes", info, len(data))
		}
		if info.Format == model.CoredumpFormatELF && (info.ELFOffset < 12 || info.ELFOffset+info.ELFLength > info.Length) {
			t.Fatalf("ELF at %d+%d in a %d-byte dump", info.ELFOffset, info.ELFLength, info.Length)
		}
		if len(info.ELFSHA256Prefix) > 64 || strings.Trim(info.ELFSHA256Prefix, "0123456789abcdef") != "" {
			t.Fatalf("ELF SHA-256 prefix %q", info.ELFSHA256Prefix)
		}
		if len(info.PanicReason) > 512 || strings.IndexFunc(info.PanicReason, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
			t.Fatalf("panic reason %q", info.PanicReason)
		}
	})
}
