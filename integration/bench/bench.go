// Package bench holds the scenarios of `make bench` (SPEC §10): each one
// runs espmdm against the integration stack and returns its figures, which
// the bench command prints as `BENCH <name> key=value …` lines and writes
// to docs/benchmarks.md. Nothing here asserts a timing.
//
// A scenario is a Scenario value; to add one, write its Run function and
// append it to All.
package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/integration/bench/fleetrotation"
)

// Scenario is one benchmark.
type Scenario struct {
	// Name is the scenario's name in -scenarios and in its BENCH line.
	Name string
	// Doc says, in Markdown, what the scenario measures and how; it heads
	// the scenario's section of docs/benchmarks.md.
	Doc string
	// Run runs the scenario once and returns its figures. It must remove
	// what it created (databases, Keycloak clients) before it returns.
	Run func(ctx context.Context, env *Env) (Result, error)
}

// All lists every scenario, in the order the command runs them.
func All() []Scenario {
	var fleets []fleetrotation.Result
	return []Scenario{IOTConfig(), Provisioning(), Batch(), Scale(),
		FleetRotation("grace", &fleets), FleetRotation("restore", &fleets), Campaign()}
}

// Env is what a scenario runs with.
type Env struct {
	Stack *integration.Stack
	// Log receives progress lines (not figures).
	Log io.Writer
	// TempDir is a directory the scenarios may use; the command removes it.
	TempDir string
	// Samples is how many requests each latency figure is measured over
	// (default 200).
	Samples int
	// Duration is how long each closed-loop load runs (default 10 s).
	Duration time.Duration

	// ChartPath, when set, is where fleet_rotation draws its PNG chart.
	ChartPath string

	binary string // the espmdm binary, built on first use
}

func (e *Env) logf(format string, args ...any) {
	if e.Log != nil {
		fmt.Fprintf(e.Log, "bench: "+format+"\n", args...)
	}
}

func (e *Env) samples() int {
	if e.Samples > 0 {
		return e.Samples
	}
	return 200
}

func (e *Env) duration() time.Duration {
	if e.Duration > 0 {
		return e.Duration
	}
	return 10 * time.Second
}

// Figure is one named value of a result; Value is already formatted.
type Figure struct {
	Key   string
	Value string
	// Help explains the figure in the Markdown table.
	Help string
}

// Result is a scenario's figures, in the order they are printed, and notes
// for the document.
type Result struct {
	Figures []Figure
	Notes   []string
}

// Add appends a figure. Floats are printed with up to three significant
// decimals (two for values of 100 or more), durations in milliseconds.
func (r *Result) Add(key string, v any, help string) {
	r.Figures = append(r.Figures, Figure{Key: key, Value: FormatValue(v), Help: help})
}

// Note appends a note for the document.
func (r *Result) Note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Get returns the value of key, "" if absent.
func (r Result) Get(key string) string {
	for _, f := range r.Figures {
		if f.Key == key {
			return f.Value
		}
	}
	return ""
}

// FormatValue formats a figure's value: ints as they are, floats rounded,
// durations as milliseconds.
func FormatValue(v any) string {
	switch x := v.(type) {
	case time.Duration:
		return FormatValue(Millis(x))
	case float64:
		switch {
		case math.IsNaN(x) || math.IsInf(x, 0):
			return "NaN"
		case math.Abs(x) >= 100:
			return strconv.FormatFloat(x, 'f', 1, 64)
		case math.Abs(x) >= 1:
			return strconv.FormatFloat(x, 'f', 2, 64)
		default:
			return strconv.FormatFloat(x, 'f', 3, 64)
		}
	case string:
		return strings.ReplaceAll(x, " ", "_")
	default:
		return fmt.Sprint(x)
	}
}

// Millis is d in milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Line is the BENCH line of a scenario's result.
func Line(name string, r Result) string {
	var b strings.Builder
	b.WriteString("BENCH ")
	b.WriteString(name)
	for _, f := range r.Figures {
		fmt.Fprintf(&b, " %s=%s", f.Key, f.Value)
	}
	return b.String()
}

// Percentile returns the p-th percentile (0 < p <= 100) of samples by the
// nearest-rank method; zero for no samples. samples is not modified.
func Percentile(samples []time.Duration, p float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = max(1, min(rank, len(s)))
	return s[rank-1]
}

// Select returns the scenarios named in list (comma-separated; empty: all).
func Select(all []Scenario, list string) ([]Scenario, error) {
	if strings.TrimSpace(list) == "" {
		return all, nil
	}
	var out []Scenario
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		i := slices.IndexFunc(all, func(s Scenario) bool { return s.Name == name })
		if i < 0 {
			var names []string
			for _, s := range all {
				names = append(names, s.Name)
			}
			return nil, fmt.Errorf("unknown scenario %q (have %s)", name, strings.Join(names, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

// rssKB reads a VmRSS-style field (in kB) from /proc/<pid>/status; pid 0
// is this process.
func rssKB(pid int, field string) (int64, error) {
	path := "/proc/self/status"
	if pid > 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s", path, field)
}

// NewEnv gives the commands (cmd/bench, cmd/bench-identities) their Env:
// the stack named by $ESPMDM_STACK_ENV when attach allows it and the
// variable is set, else one started with opts (within 10 minutes), and a
// temporary directory. done removes the directory and stops a stack it
// started, reporting a failure to stop on log.
func NewEnv(ctx context.Context, opts integration.Options, attach bool, log io.Writer) (env *Env, done func(), err error) {
	var st *integration.Stack
	if path := os.Getenv(integration.EnvStackFile); attach && path != "" {
		st, err = integration.Attach(path)
	} else {
		hint := ""
		if attach {
			hint = " (set $" + integration.EnvStackFile + " to use a running one)"
		}
		fmt.Fprintln(log, "bench: starting a stack of its own"+hint)
		sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		st, err = integration.Start(sctx, opts)
		cancel()
	}
	if err != nil {
		return nil, nil, err
	}
	stop := func() {
		if err := st.Stop(context.Background()); err != nil {
			fmt.Fprintln(log, "bench: stop the stack:", err)
		}
	}
	tmp, err := os.MkdirTemp("", "espmdm-bench-")
	if err != nil {
		stop()
		return nil, nil, err
	}
	return &Env{Stack: st, Log: log, TempDir: tmp}, func() {
		_ = os.RemoveAll(tmp)
		stop()
	}, nil
}
