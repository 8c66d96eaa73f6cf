// Package coredump implements ports.CoredumpAnalyzer with Espressif's
// esp-coredump (PyPI) and a GDB: Debian's gdb-multiarch, which knows the
// RISC-V chips (esp32c2/c3/c5/c6/h2/p4...) but not Espressif's Xtensa cores.
//
// For a RISC-V dump the result is GDB's: the crashed task, the panic reason
// and the crashed task's backtrace with function, file and line. For an
// Xtensa dump (esp32, esp32s2, esp32s3) GDB gives no backtrace; the adapter
// walks the crashed task's stack itself (the windowed ABI keeps each
// caller's return address and stack pointer in the 16 bytes below the
// callee's stack pointer, and the dump holds the stack) and names every
// frame from the ELF's symbol table and line table (debug/elf,
// debug/dwarf).
//
// Each analysis runs in a temporary directory that is removed afterwards,
// with a timeout, and keeps at most MaxOutput bytes of the tool's output.
// esp-coredump 1.17.2 fails after the crashed thread with Debian's GDB (it
// expects thread names "process N", Debian's GDB says "LWP N" for a core
// file of the GNU/Linux OS ABI): the adapter runs GDB with "set osabi none"
// so that esp-coredump completes, and if a tool still stops after the
// crashed thread's backtrace, keeps that backtrace with a note.
package coredump

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Versions .ci/deps installs into the cache directory's virtualenv.
const (
	ToolVersion    = "1.17.2" // esp-coredump
	EsptoolVersion = "5.6.0"  // esptool, beside it
)

// Defaults of Config.
const (
	DefaultGDB       = "gdb-multiarch"
	DefaultTimeout   = time.Minute
	DefaultMaxOutput = 1 << 20
	DefaultMaxELF    = 512 << 20
)

// CacheDir is the directory .ci/deps installs into: $ESPMDM_CACHE_DIR, else
// the user cache directory + "/espmdm".
func CacheDir() string {
	if d := os.Getenv("ESPMDM_CACHE_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "espmdm")
	}
	return filepath.Join(os.TempDir(), "espmdm-cache")
}

// VenvBin is the path of a program in the virtualenv .ci/deps makes for
// esp-coredump and esptool.
func VenvBin(name string) string {
	return filepath.Join(CacheDir(), "coredump-"+ToolVersion, "bin", name)
}

// DefaultTool is COREDUMP_TOOL's default: esp-coredump in the cache
// directory's virtualenv.
func DefaultTool() string { return VenvBin("esp-coredump") }

// Config configures an Analyzer. Zero fields take the defaults.
type Config struct {
	// Tool is esp-coredump (COREDUMP_TOOL): a path, or a name looked up
	// in PATH. Default DefaultTool().
	Tool string
	// GDB is the GDB esp-coredump runs (COREDUMP_GDB). Default
	// gdb-multiarch from PATH.
	GDB string
	// Timeout bounds one analysis (COREDUMP_TIMEOUT). Default one minute.
	Timeout time.Duration
	// MaxOutput is how many bytes of the tool's standard output are kept
	// (and at most 64 KiB of its error output when it fails). Default
	// 1 MiB.
	MaxOutput int
	// MaxELF is the largest ELF accepted. Default 512 MiB.
	MaxELF int64
	// TempDir is where each analysis makes its directory (it runs a GDB
	// wrapper script from there, so not a noexec mount). Default
	// os.TempDir().
	TempDir string
}

// Analyzer is a ports.CoredumpAnalyzer. It is safe for concurrent use;
// each Analyze runs its own tool processes.
type Analyzer struct {
	cfg Config
	// osabiNone runs GDB with "set osabi none" (see the package doc).
	// Tests turn it off to reproduce the failure it avoids.
	osabiNone bool
}

var _ ports.CoredumpAnalyzer = (*Analyzer)(nil)

// New returns an Analyzer. It does not look for the tools: Check does, and
// so does every Analyze.
func New(cfg Config) *Analyzer {
	if cfg.Tool == "" {
		cfg.Tool = DefaultTool()
	}
	if cfg.GDB == "" {
		cfg.GDB = DefaultGDB
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.MaxELF <= 0 {
		cfg.MaxELF = DefaultMaxELF
	}
	return &Analyzer{cfg: cfg, osabiNone: true}
}

// Config returns the configuration in use, defaults filled in.
func (a *Analyzer) Config() Config { return a.cfg }

// tools resolves both tools, or says which cannot be run.
func (a *Analyzer) tools() (tool, gdb string, err error) {
	if tool, err = exec.LookPath(a.cfg.Tool); err != nil {
		return "", "", &model.CoredumpToolError{Tool: "esp-coredump", Path: a.cfg.Tool, Err: err}
	}
	if gdb, err = exec.LookPath(a.cfg.GDB); err != nil {
		return "", "", &model.CoredumpToolError{Tool: "gdb", Path: a.cfg.GDB, Err: err}
	}
	if tool, err = filepath.Abs(tool); err != nil {
		return "", "", &model.CoredumpToolError{Tool: "esp-coredump", Path: a.cfg.Tool, Err: err}
	}
	if gdb, err = filepath.Abs(gdb); err != nil {
		return "", "", &model.CoredumpToolError{Tool: "gdb", Path: a.cfg.GDB, Err: err}
	}
	return tool, gdb, nil
}

// Check implements ports.CoredumpAnalyzer: both tools are found, and
// esp-coredump answers --version.
func (a *Analyzer) Check(ctx context.Context) error {
	tool, gdb, err := a.tools()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, "--version").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("espcoredump.py v")) {
		return &model.CoredumpToolError{Tool: "esp-coredump", Path: a.cfg.Tool, Err: versionErr(err, out)}
	}
	out, err = exec.CommandContext(ctx, gdb, "--version").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("GNU gdb")) {
		return &model.CoredumpToolError{Tool: "gdb", Path: a.cfg.GDB, Err: versionErr(err, out)}
	}
	return nil
}

func versionErr(err error, out []byte) error {
	if err != nil {
		return fmt.Errorf("--version: %w: %s", err, firstLine(string(out)))
	}
	return fmt.Errorf("--version printed %q", firstLine(string(out)))
}

func failed(reason, text string, err error) error {
	return &model.CoredumpFailedError{Reason: reason, Text: text, Err: err}
}

// Analyze implements ports.CoredumpAnalyzer. Every string of the result,
// and of a *model.CoredumpFailedError, is valid UTF-8 without NUL bytes
// (GDB prints the crashed program's strings as they are), so it can be
// stored as text.
func (a *Analyzer) Analyze(ctx context.Context, dump []byte, elf io.Reader) (model.CoredumpAnalysis, error) {
	res, err := a.analyze(ctx, dump, elf)
	var fe *model.CoredumpFailedError
	if errors.As(err, &fe) {
		fe.Reason, fe.Text = clean(fe.Reason), clean(fe.Text)
	}
	res.CrashedTask, res.PanicReason, res.Text = clean(res.CrashedTask), clean(res.PanicReason), clean(res.Text)
	for i := range res.Frames {
		res.Frames[i].Function, res.Frames[i].File = clean(res.Frames[i].Function), clean(res.Frames[i].File)
	}
	for i := range res.Notes {
		res.Notes[i] = clean(res.Notes[i])
	}
	return res, err
}

// clean makes s valid UTF-8 without NUL bytes.
func clean(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

func (a *Analyzer) analyze(ctx context.Context, dump []byte, elf io.Reader) (model.CoredumpAnalysis, error) {
	var none model.CoredumpAnalysis
	tool, gdb, err := a.tools()
	if err != nil {
		return none, err
	}
	info, err := model.ReadCoredumpInfo(dump)
	if err != nil {
		return none, failed("not an ESP-IDF core dump: "+err.Error(), "", err)
	}
	if !info.ChecksumValid {
		return none, failed("the dump's checksum does not match its content: it is corrupt or cut short", "",
			&model.CoredumpFormatError{Off: int64(info.Length), Msg: "checksum mismatch"})
	}

	dir, err := os.MkdirTemp(a.cfg.TempDir, "espmdm-coredump-")
	if err != nil {
		return none, fmt.Errorf("core dump analysis: %w", err)
	}
	defer os.RemoveAll(dir)

	elfPath := filepath.Join(dir, "app.elf")
	sum, err := a.copyELF(elfPath, elf)
	if err != nil {
		return none, err
	}
	if info.ELFSHA256Prefix != "" && !info.MatchesELF(sum) {
		return none, failed(fmt.Sprintf("the ELF's SHA-256 is %s, the dump names an ELF whose SHA-256 starts with %s",
			sum, info.ELFSHA256Prefix), "", model.ErrCoredumpWrongELF)
	}
	dumpPath := filepath.Join(dir, "core.bin")
	if err := os.WriteFile(dumpPath, dump[:info.Length], 0o600); err != nil {
		return none, fmt.Errorf("core dump analysis: %w", err)
	}
	gdbArg := gdb
	if a.osabiNone {
		if gdbArg, err = writeGDBWrapper(dir, gdb); err != nil {
			return none, fmt.Errorf("core dump analysis: %w", err)
		}
	}

	run, err := a.runTool(ctx, dir, tool, "--chip", info.Chip, "--gdb-timeout-sec", fmt.Sprint(a.gdbTimeoutSec()),
		"info_corefile", "--gdb", gdbArg, "-t", "raw", "-c", dumpPath, elfPath)
	if err != nil {
		return none, err
	}
	rep := parseReport(run.stdout)
	res := model.CoredumpAnalysis{
		Chip: info.Chip, CrashedTask: rep.crashedTask, PanicReason: rep.panicReason,
		Frames: rep.frames, Text: run.stdout,
	}
	if res.PanicReason == "" {
		res.PanicReason = info.PanicReason
	}
	if rep.isr {
		res.Notes = append(res.Notes, "The crash happened in an interrupt handler, not in a task.")
	}
	if run.truncated {
		res.Notes = append(res.Notes, fmt.Sprintf("The tool printed more than %d bytes; the text is cut there.", a.cfg.MaxOutput))
	}
	toolFailed := run.timedOut || run.exitCode != 0
	stopped := ""
	if run.timedOut {
		stopped = fmt.Sprintf("esp-coredump did not finish within %s", a.cfg.Timeout)
	} else if run.exitCode != 0 {
		stopped = fmt.Sprintf("esp-coredump exited with status %d: %s", run.exitCode, lastLine(run.stderr))
	}
	if toolFailed && run.stderr != "" {
		res.Text += "\n---- esp-coredump's error output ----\n" + run.stderr
	}

	if info.Xtensa {
		own, err := xtensaBacktrace(dump[info.ELFOffset:info.ELFOffset+info.ELFLength], elfPath)
		switch {
		case err != nil && toolFailed:
			return none, failed(stopped+"; and no backtrace from the stack: "+err.Error(), res.Text, err)
		case err != nil:
			res.Notes = append(res.Notes, "Xtensa: no backtrace could be read from the stack: "+err.Error()+".")
		default:
			res.Frames = own.frames
			if res.CrashedTask == "" {
				res.CrashedTask = own.task
			}
			res.Text = own.text(res) + "\n" + res.Text
			res.Notes = append(res.Notes, "Xtensa: GDB here does not know Espressif's Xtensa cores, so the backtrace was read from the task's stack and named from the ELF's symbol and line tables (no inlined frames, no arguments).")
		}
		if toolFailed {
			res.Notes = append(res.Notes, stopped+"; the backtrace above does not depend on it.")
		}
		return res, nil
	}

	if toolFailed {
		if len(res.Frames) == 0 {
			return none, failed(stopped, res.Text, nil)
		}
		res.Notes = append(res.Notes, stopped+", after it had printed the crashed task's backtrace; the text up to that point is complete.")
	} else if len(res.Frames) == 0 {
		res.Notes = append(res.Notes, "GDB printed no backtrace for the crashed task.")
	}
	return res, nil
}

// gdbTimeoutSec is esp-coredump's wait for each GDB answer (its default,
// 3 s, is too short for a large ELF on a busy machine). It only matters
// when an answer is slow: esp-coredump stops waiting as soon as it comes.
func (a *Analyzer) gdbTimeoutSec() int {
	s := int(a.cfg.Timeout / 3 / time.Second)
	return min(max(s, 3), 20)
}

// copyELF writes the ELF to path (at most MaxELF bytes) and returns its
// SHA-256 in hex.
func (a *Analyzer) copyELF(path string, elf io.Reader) (string, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("core dump analysis: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(elf, a.cfg.MaxELF+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("core dump analysis: reading the ELF: %w", err)
	}
	if n > a.cfg.MaxELF {
		return "", failed(fmt.Sprintf("the ELF is larger than %d bytes", a.cfg.MaxELF), "", nil)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeGDBWrapper writes an executable script that runs gdb with
// "set osabi none" before it loads anything, and returns its path.
func writeGDBWrapper(dir, gdb string) (string, error) {
	p := filepath.Join(dir, "gdb")
	script := "#!/bin/sh\nexec " + shellQuote(gdb) + " -iex 'set osabi none' \"$@\"\n"
	if err := os.WriteFile(p, []byte(script), 0o700); err != nil { //nolint:gosec // an executable script
		return "", err
	}
	return p, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

type toolRun struct {
	stdout, stderr string
	truncated      bool
	exitCode       int
	timedOut       bool
}

// runTool runs the tool in its own process group (esp-coredump starts GDB)
// with the analysis timeout; the whole group is killed when the time is up
// or ctx ends, and after the tool exits.
func (a *Analyzer) runTool(ctx context.Context, dir, tool string, args ...string) (toolRun, error) {
	runCtx, cancel := context.WithTimeout(ctx, a.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, tool, args...)
	cmd.Dir = dir
	cmd.Env = toolEnv(dir)
	stdout := &capped{max: a.cfg.MaxOutput}
	stderr := &capped{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		switch {
		case ctx.Err() != nil:
			return toolRun{}, fmt.Errorf("core dump analysis interrupted: %w", ctx.Err())
		case runCtx.Err() != nil:
			return toolRun{timedOut: true}, nil
		}
		return toolRun{}, &model.CoredumpToolError{Tool: "esp-coredump", Path: tool, Err: err}
	}
	err := cmd.Wait()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // a GDB left behind
	if ctx.Err() != nil {
		return toolRun{}, fmt.Errorf("core dump analysis interrupted: %w", ctx.Err())
	}
	run := toolRun{stdout: stdout.String(), stderr: stderr.String(), truncated: stdout.cut}
	var exitErr *exec.ExitError
	switch {
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		run.timedOut = true
	case errors.As(err, &exitErr):
		run.exitCode = exitErr.ExitCode()
	case err != nil:
		return toolRun{}, fmt.Errorf("core dump analysis: running esp-coredump: %w", err)
	}
	return run, nil
}

// toolEnv is the process environment with TMPDIR set to the analysis's
// directory (esp-coredump writes its temporary core file there) and no
// colours.
func toolEnv(dir string) []string {
	env := make([]string, 0, len(os.Environ())+3)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "TMPDIR" || k == "NO_COLOR" || k == "TERM" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "TMPDIR="+dir, "NO_COLOR=1", "TERM=dumb")
}

// capped keeps the first max bytes written to it.
type capped struct {
	max int
	buf bytes.Buffer
	cut bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room < len(p) {
		c.cut = true
		if room > 0 {
			c.buf.Write(p[:room])
		}
		return len(p), nil
	}
	c.buf.Write(p)
	return len(p), nil
}

func (c *capped) String() string { return c.buf.String() }

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 300 {
		s = s[:300]
	}
	if s == "" {
		return "no error output"
	}
	return s
}
