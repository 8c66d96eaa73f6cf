package coredump_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/coredump"
	"github.com/espmdm/espmdm/core/model"
)

// The real ESP32-C3 application ELF and the core dump it left (Espressif's
// esp-coredump tests, Apache-2.0: testdata/LICENSE): fail_once() calls
// abort() at test_core_dump.c:14.
const (
	c3ELF  = "testdata/esp32c3.elf"
	c3Dump = "testdata/esp32c3.coredump"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// toolConfig is the configuration the tests run the real tools with:
// COREDUMP_TOOL and COREDUMP_GDB when set, else the defaults (make deps
// installs them). Without the tools the test is skipped, except in CI
// (CI set), where it fails.
func toolConfig(t *testing.T) coredump.Config {
	t.Helper()
	cfg := coredump.Config{Tool: os.Getenv("COREDUMP_TOOL"), GDB: os.Getenv("COREDUMP_GDB"), TempDir: t.TempDir()}
	if err := coredump.New(cfg).Check(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("the core dump tools are needed (make deps installs them): %v", err)
		}
		t.Skipf("the core dump tools are not installed (make deps): %v", err)
	}
	return cfg
}

// analyze runs a on dump and the ELF file elf.
func analyze(t *testing.T, a *coredump.Analyzer, dump []byte, elf string) (model.CoredumpAnalysis, error) {
	t.Helper()
	f, err := os.Open(elf)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return a.Analyze(context.Background(), dump, f)
}

// assertNothingLeft checks that an analysis removed its directory and left
// no process running from it. A process killed with SIGKILL takes a moment
// to go: the check waits up to five seconds for that.
func assertNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Errorf("temporary directory %s holds %d entries (%v) after the analysis", dir, len(ents), err)
	}
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		left = left[:0]
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(dir)) {
				left = append(left, filepath.Dir(p)+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) != 0 {
		t.Errorf("processes still run from the analysis's directory: %q", left)
	}
}

// assertC3Backtrace checks the crashed task's backtrace of the C3 dump.
func assertC3Backtrace(t *testing.T, got model.CoredumpAnalysis) {
	t.Helper()
	if got.Chip != "esp32c3" || got.CrashedTask != "main" {
		t.Errorf("chip %q, crashed task %q; want esp32c3, main", got.Chip, got.CrashedTask)
	}
	if want := "abort() was called at PC 0x42009351 on core 0"; got.PanicReason != want {
		t.Errorf("panic reason %q, want %q", got.PanicReason, want)
	}
	if len(got.Frames) < 4 {
		t.Fatalf("frames %+v, want at least 4", got.Frames)
	}
	if f := got.Frames[0]; f.PC != 0x40380698 || f.Function != "panic_abort" || !strings.HasSuffix(f.File, "esp_system/panic.c") || f.Line != 472 {
		t.Errorf("frame 0 = %+v, want panic_abort at 0x40380698, panic.c:472", f)
	}
	if f := got.Frames[2]; f.Function != "abort" || !strings.HasSuffix(f.File, "newlib/abort.c") || f.Line != 38 {
		t.Errorf("frame 2 = %+v, want abort at abort.c:38", f)
	}
	crash, ok := got.CrashFrame()
	if !ok || crash.PC != 0x42009354 || crash.Function != "fail_once" || filepath.Base(crash.File) != "test_core_dump.c" || crash.Line != 14 {
		t.Errorf("crash frame %+v (%v), want fail_once at 0x42009354, test_core_dump.c:14", crash, ok)
	}
}

func TestAnalyzeC3(t *testing.T) {
	cfg := toolConfig(t)
	a := coredump.New(cfg)
	start := time.Now()
	got, err := analyze(t, a, readFile(t, c3Dump), c3ELF)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("analysed in %v:\n%s", time.Since(start).Round(time.Millisecond), got.Text)
	assertC3Backtrace(t, got)
	// GDB runs with "set osabi none", so esp-coredump completes: the
	// threads summary and every thread's backtrace are there.
	for _, want := range []string{"CURRENT THREAD STACK", "process 1070132272", "0x3fc8f38c             IDLE", "THREAD 3 (TCB: 0x3fc8da94, name: 'esp_timer')", "ESP32 CORE DUMP END"} {
		if !strings.Contains(got.Text, want) {
			t.Errorf("the text lacks %q", want)
		}
	}
	if len(got.Notes) != 0 {
		t.Errorf("notes %q, want none", got.Notes)
	}
	assertNothingLeft(t, cfg.TempDir)
}

// With Debian's GDB as it is, esp-coredump 1.17.2 prints the crashed
// task's backtrace and then fails on GDB's "LWP" thread names: the
// backtrace is kept, with a note.
func TestAnalyzeKeepsBacktraceWhenToolStops(t *testing.T) {
	cfg := toolConfig(t)
	a := coredump.New(cfg)
	coredump.WithoutOSABIWorkaround(a)
	got, err := analyze(t, a, readFile(t, c3Dump), c3ELF)
	if err != nil {
		t.Fatal(err)
	}
	assertC3Backtrace(t, got)
	if len(got.Notes) != 1 || !strings.Contains(got.Notes[0], "exited with status 1") || !strings.Contains(got.Notes[0], "LWP") {
		t.Errorf("notes %q, want one saying esp-coredump exited with status 1 on LWP", got.Notes)
	}
	if !strings.Contains(got.Text, "gdb2freertos_thread_id") {
		t.Errorf("the text lacks the tool's traceback:\n%s", got.Text)
	}
	assertNothingLeft(t, cfg.TempDir)
}

func TestAnalyzeWrongELF(t *testing.T) {
	cfg := toolConfig(t)
	other := filepath.Join(t.TempDir(), "other.elf")
	elf := readFile(t, c3ELF)
	elf[len(elf)-1] ^= 0xFF // another build: another SHA-256
	if err := os.WriteFile(other, elf, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := analyze(t, coredump.New(cfg), readFile(t, c3Dump), other)
	var fe *model.CoredumpFailedError
	if !errors.Is(err, model.ErrCoredumpWrongELF) || !errors.As(err, &fe) {
		t.Fatalf("got %v, want a failure matching ErrCoredumpWrongELF", err)
	}
	if !strings.Contains(fe.Reason, "7d946a8e8") {
		t.Errorf("reason %q does not name the SHA-256 the dump names", fe.Reason)
	}
	assertNothingLeft(t, cfg.TempDir)
}

// setCRC rewrites the CRC-32 of a v1.2 dump after a change.
func setCRC(b []byte) []byte {
	n := binary.LittleEndian.Uint32(b)
	binary.LittleEndian.PutUint32(b[n-4:], crc32.ChecksumIEEE(b[:n-4]))
	return b
}

func TestAnalyzeGarbageFails(t *testing.T) {
	cfg := toolConfig(t)
	dump := readFile(t, c3Dump)
	flipped := append([]byte(nil), dump...)
	flipped[len(flipped)/2] ^= 0x40
	// The ESP_CORE_DUMP_INFO note's version word (before the SHA-256)
	// disagrees with the header: esp-coredump refuses the dump.
	badNote := append([]byte(nil), dump...)
	i := bytes.Index(badNote, []byte("7d946a8e8"))
	binary.LittleEndian.PutUint32(badNote[i-4:], 0x00050100)
	setCRC(badNote)

	tests := []struct {
		name, dump, reason string
		is                 error
	}{
		{"random bytes", "\x13\x37 not a core dump, just some bytes \xFF\x00\x01", "not an ESP-IDF core dump", model.ErrCoredumpFormat},
		{"erased partition", strings.Repeat("\xFF", 4096), "not an ESP-IDF core dump", model.ErrCoredumpFormat},
		{"a flipped bit", string(flipped), "checksum", model.ErrCoredumpFormat},
		{"refused by esp-coredump", string(badNote), "Invalid application image for coredump", model.ErrCoredumpFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := analyze(t, coredump.New(cfg), []byte(tt.dump), c3ELF)
			var fe *model.CoredumpFailedError
			if !errors.As(err, &fe) || !errors.Is(err, model.ErrCoredumpFailed) || !errors.Is(err, tt.is) {
				t.Fatalf("got %+v, %v; want a *CoredumpFailedError matching %v", got, err, tt.is)
			}
			t.Logf("reason: %s", fe.Reason)
			if !strings.Contains(fe.Reason, tt.reason) {
				t.Errorf("reason %q, want it to say %q", fe.Reason, tt.reason)
			}
			if errors.Is(err, model.ErrCoredumpToolMissing) {
				t.Errorf("%v also says the tools are missing", err)
			}
		})
	}
	assertNothingLeft(t, cfg.TempDir)
}

// Missing tools are their own error, whatever the dump: the server keeps
// the dump pending.
func TestAnalyzeMissingTool(t *testing.T) {
	dir := t.TempDir()
	noTool := coredump.Config{Tool: filepath.Join(dir, "esp-coredump"), GDB: "gdb-multiarch", TempDir: dir}
	noGDB := coredump.Config{Tool: os.Getenv("COREDUMP_TOOL"), GDB: "espmdm-no-such-gdb", TempDir: dir}
	if noGDB.Tool == "" {
		noGDB.Tool = coredump.DefaultTool()
	}
	tests := []struct {
		name     string
		cfg      coredump.Config
		wantTool string
	}{
		{"esp-coredump", noTool, "esp-coredump"},
		{"gdb", noGDB, "gdb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.wantTool == "gdb" {
				toolConfig(t) // the tool itself must be there
			}
			a := coredump.New(tt.cfg)
			for name, err := range map[string]error{
				"Check":   a.Check(context.Background()),
				"Analyze": func() error { _, err := analyze(t, a, readFile(t, c3Dump), c3ELF); return err }(),
			} {
				var te *model.CoredumpToolError
				if !errors.Is(err, model.ErrCoredumpToolMissing) || !errors.As(err, &te) || te.Tool != tt.wantTool {
					t.Errorf("%s: got %v, want a *CoredumpToolError for %s", name, err, tt.wantTool)
				}
				if errors.Is(err, model.ErrCoredumpFailed) {
					t.Errorf("%s: %v also says the analysis failed", name, err)
				}
			}
		})
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("%d entries left in %s", len(ents), dir)
	}
}

// An analysis that runs out of its time fails, and leaves no process
// behind; one whose caller gives up is not a failure (the dump stays
// pending).
func TestAnalyzeTimeoutAndCancel(t *testing.T) {
	cfg := toolConfig(t)
	// The analysis takes a few hundred milliseconds here (Python starts,
	// GDB loads a 3.7 MB ELF): 50 ms always runs out, at whatever point.
	cfg.Timeout = 50 * time.Millisecond
	_, err := analyze(t, coredump.New(cfg), readFile(t, c3Dump), c3ELF)
	var fe *model.CoredumpFailedError
	if !errors.As(err, &fe) || !strings.Contains(fe.Reason, "did not finish within 50ms") {
		t.Fatalf("got %v, want a failure saying the analysis ran out of time", err)
	}
	assertNothingLeft(t, cfg.TempDir)

	cfg.Timeout = time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	f, err := os.Open(c3ELF)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = coredump.New(cfg).Analyze(ctx, readFile(t, c3Dump), f)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, model.ErrCoredumpFailed) {
		t.Fatalf("got %v, want the caller's context error and no failure", err)
	}
	assertNothingLeft(t, cfg.TempDir)
}

func TestAnalyzeBoundsOutput(t *testing.T) {
	cfg := toolConfig(t)
	cfg.MaxOutput = 4000 // the crashed task's backtrace ends before that
	got, err := analyze(t, coredump.New(cfg), readFile(t, c3Dump), c3ELF)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Text) > cfg.MaxOutput {
		t.Errorf("text of %d bytes, want at most %d", len(got.Text), cfg.MaxOutput)
	}
	if len(got.Notes) != 1 || !strings.Contains(got.Notes[0], "cut") {
		t.Errorf("notes %q, want one saying the text was cut", got.Notes)
	}
	assertC3Backtrace(t, got)
}

// The ELF is read to its end whatever it is; a reader that fails is an I/O
// error, not a failed analysis (the dump is tried again).
func TestAnalyzeELFReadError(t *testing.T) {
	cfg := toolConfig(t)
	_, err := coredump.New(cfg).Analyze(context.Background(), readFile(t, c3Dump), iotestErrReader{})
	if err == nil || errors.Is(err, model.ErrCoredumpFailed) || errors.Is(err, model.ErrCoredumpToolMissing) {
		t.Fatalf("got %v, want a plain I/O error", err)
	}
	assertNothingLeft(t, cfg.TempDir)
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func BenchmarkAnalyzeC3(b *testing.B) {
	cfg := coredump.Config{Tool: os.Getenv("COREDUMP_TOOL"), GDB: os.Getenv("COREDUMP_GDB")}
	a := coredump.New(cfg)
	if err := a.Check(context.Background()); err != nil {
		b.Skip(err)
	}
	dump := readFile(b, c3Dump)
	elf := readFile(b, c3ELF)
	for b.Loop() {
		if _, err := a.Analyze(context.Background(), dump, bytes.NewReader(elf)); err != nil {
			b.Fatal(err)
		}
	}
}
