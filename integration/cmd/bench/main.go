// Command bench runs the benchmark scenarios of integration/bench (SPEC
// §10) against the integration stack named by $ESPMDM_STACK_ENV, or a stack
// of its own, prints one `BENCH <name> key=value …` line per scenario and
// writes the figures with the machine they ran on to docs/benchmarks.md:
//
//	go run ./integration/cmd/withstack -- go run ./integration/cmd/bench [-scenarios a,b] [-out docs/benchmarks.md]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/integration/bench"
)

func main() { os.Exit(run()) }

func run() int {
	all := bench.All()
	var names []string
	for _, s := range all {
		names = append(names, s.Name)
	}
	list := flag.String("scenarios", "", "comma-separated scenarios to run (default all: "+strings.Join(names, ",")+")")
	out := flag.String("out", "docs/benchmarks.md", "Markdown file to write the figures to; empty: print only")
	launcher := flag.String("launcher", os.Getenv("ESPMDM_LAUNCHER"), "launcher of a stack of its own (without $ESPMDM_STACK_ENV)")
	duration := flag.Duration("duration", 10*time.Second, "duration of each closed-loop load")
	samples := flag.Int("samples", 200, "sequential requests per latency figure")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the bench process (generator and in-process espmdm) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: cpu profile:", err)
			return 2
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	scenarios, err := bench.Select(all, *list)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Without $ESPMDM_STACK_ENV (a running stack) it starts one of its own.
	env, closeEnv, err := bench.NewEnv(ctx, integration.Options{Launcher: *launcher}, true, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer closeEnv()
	st := env.Stack
	env.Samples, env.Duration = *samples, *duration
	if *out != "" {
		env.ChartPath = filepath.Join(filepath.Dir(*out), "fleet_rotation.png")
	}

	machine := bench.DescribeMachine(ctx, st)
	code := 0
	var runs []bench.Run
	for _, s := range scenarios {
		if ctx.Err() != nil {
			break
		}
		began := time.Now()
		res, err := s.Run(ctx, env)
		r := bench.Run{Scenario: s, Result: res, Err: err, Elapsed: time.Since(began)}
		runs = append(runs, r)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s failed: %v\n", s.Name, err)
			code = 1
			continue
		}
		fmt.Println(bench.Line(s.Name, res))
		fmt.Fprintf(os.Stderr, "bench: %s took %s\n", s.Name, r.Elapsed.Round(100*time.Millisecond))
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted; not writing", *out)
		return 130
	}
	if *out != "" {
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		// The identities run's section (make bench-identities) is kept.
		old, _ := os.ReadFile(*out)
		var doc strings.Builder
		if err := bench.WriteMarkdown(&doc, machine, runs); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		text := doc.String()
		if s := bench.IdentitiesSections(string(old)); s != "" {
			text = strings.TrimRight(text, "\n") + "\n\n" + s + "\n"
		}
		if err := os.WriteFile(*out, []byte(text), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "bench: wrote", *out)
	}
	return code
}
