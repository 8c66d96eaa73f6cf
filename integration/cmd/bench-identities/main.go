// Command bench-identities measures espmdm at growing numbers of real
// Keycloak clients (make bench-identities; not in CI: it runs for up to
// an hour). It starts a stack of its own whose Keycloak keeps its data in
// PostgreSQL, grows one espmdm's fleet to each size of -sizes while the
// -budget allows, prints one `BENCH identities clients=N …` line per size
// and writes the table and a chart into docs/benchmarks.md (between its
// bench-identities markers, which `make bench` keeps):
//
//	go run ./integration/cmd/bench-identities [-sizes 1000,10000,20000,50000,100000] [-budget 60m] [-out docs/benchmarks.md]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/integration/bench"
)

func main() { os.Exit(run()) }

func run() int {
	sizes := flag.String("sizes", "1000,10000,20000,50000,100000", "comma-separated fleet sizes (Keycloak clients) to measure at, ascending")
	budget := flag.Duration("budget", 60*time.Minute, "stop before a size that would end after this long")
	out := flag.String("out", "docs/benchmarks.md", "Markdown file whose bench-identities section is rewritten; empty: print only")
	mqttAuth := flag.String("mqtt-auth", "dynsec", "espmdm's MQTT_AUTH: dynsec (a broker account per device) or none (leave the broker's cost out)")
	heap := flag.String("keycloak-heap", "-Xms256m -Xmx3g", "Keycloak's JAVA_OPTS_KC_HEAP")
	flag.Parse()
	var ns []int
	for _, s := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || (len(ns) > 0 && n <= ns[len(ns)-1]) {
			fmt.Fprintf(os.Stderr, "bench-identities: -sizes %q: want ascending positive integers\n", *sizes)
			return 2
		}
		ns = append(ns, n)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Read by the processes launcher when it starts Keycloak.
	if err := os.Setenv("JAVA_OPTS_KC_HEAP", *heap); err != nil {
		fmt.Fprintln(os.Stderr, "bench-identities:", err)
		return 1
	}
	// Always a stack of its own: Keycloak on PostgreSQL, with its metrics.
	env, closeEnv, err := bench.NewEnv(ctx, integration.Options{Launcher: "processes", KeycloakOnPostgres: true, KeycloakMetrics: true}, false, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-identities:", err)
		return 1
	}
	defer closeEnv()
	machine := bench.DescribeMachine(ctx, env.Stack)
	points, err := bench.Identities(ctx, env, bench.IdentitiesOptions{
		Sizes: ns, Budget: *budget, MQTTAuth: *mqttAuth,
		Point: func(p bench.IdentitiesPoint) { fmt.Println(p.Line()) },
	})
	code := 0
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-identities:", err)
		code = 1
	}
	if *out == "" || len(points) == 0 {
		return code
	}
	chart := filepath.Join(filepath.Dir(*out), "identities-"+*mqttAuth+".png")
	var png bytes.Buffer
	err = bench.WriteIdentitiesChart(&png, points)
	if err == nil {
		err = os.WriteFile(chart, png.Bytes(), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-identities: chart:", err)
		return 1
	}
	old, err := os.ReadFile(*out)
	if err != nil && !os.IsNotExist(err) {
		fmt.Fprintln(os.Stderr, "bench-identities:", err)
		return 1
	}
	doc := bench.WithIdentitiesSection(string(old), *mqttAuth, bench.IdentitiesMarkdown(machine, points, *budget, filepath.Base(chart)))
	if err := os.WriteFile(*out, []byte(doc), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench-identities:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "bench-identities: wrote", *out, "and", chart)
	return code
}
