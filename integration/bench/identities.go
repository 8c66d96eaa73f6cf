package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/espmdm/espmdm/integration/bench/fleetrotation"
	"github.com/espmdm/espmdm/integration/bench/launch"
)

// The cost curve to 100,000 identities (make bench-identities, not in CI):
// one espmdm, on a stack whose Keycloak keeps its data in PostgreSQL,
// grows its fleet through POST /api/devices/batch and at each size
// measures what the product does every day with that many clients in the
// realm.

// IdentitiesOptions configure Identities. Zero values take the defaults
// named.
type IdentitiesOptions struct {
	// Sizes are the fleet sizes (espmdm devices, each a Keycloak client)
	// to measure at, ascending; default 1,000, 10,000, 20,000, 50,000,
	// 100,000.
	Sizes []int
	// Budget bounds the run: a size is skipped (and the run ends) when
	// growing to it at the last measured rate, plus the measurements,
	// would end after the budget; default 60 min. The first size is always
	// measured.
	Budget time.Duration
	// Batch is the devices per POST /api/devices/batch; default 1,000.
	Batch int
	// Point receives each size's figures as soon as they are measured.
	Point func(IdentitiesPoint)
	// MQTTAuth is espmdm's MQTT_AUTH: "dynsec" (default, every device
	// gets a broker account) or "none" (the broker's cost left out, to
	// see Keycloak's and espmdm's own curve).
	MQTTAuth string
}

// IdentitiesPoint is the figures at one fleet size.
type IdentitiesPoint struct {
	// Clients is the fleet's size: devices espmdm holds, each with its
	// Keycloak client (the rotation's own 1,000 devices and the floor's
	// 300 raw clients come on top while they run).
	Clients int
	// ProvisionPerS is devices created per second by the batches that grew
	// the fleet to Clients (from the previous size).
	ProvisionPerS float64
	// Rotation is a grace rotation of 1,000 more devices at this size.
	Rotation fleetrotation.Result
	// IOTConfigRPS is GET /iot/config per second; IOTConfigRatio that
	// over a bare Fiber handler's in the same run.
	IOTConfigRPS, IOTConfigRatio float64
	// KeycloakMB and PostgresMB are the proportional set sizes (PSS) of
	// the Keycloak JVM and of every PostgreSQL process, MiB.
	KeycloakMB, PostgresMB float64
	// Admin is Keycloak's request latencies by kind during this size's
	// growth and measurements, from its own metrics.
	Admin []RequestKind
	// Seconds is how long this size took (growth and measurements).
	Seconds float64
	// MQTTAuth is the run's MQTT_AUTH.
	MQTTAuth string
}

// RequestKind is Keycloak's requests of one method and URI template.
type RequestKind struct {
	Kind   string // e.g. "POST /admin/realms/{realm}/clients"
	Count  int64
	MeanMS float64
	// P99MS is the 99th percentile's bucket bound, ms (0: no histogram).
	P99MS float64
}

// Line is the point as a BENCH line.
func (p IdentitiesPoint) Line() string {
	kind := func(method, suffix string) string {
		for _, k := range p.Admin {
			if strings.HasPrefix(k.Kind, method+" ") && strings.HasSuffix(k.Kind, suffix) {
				return fmt.Sprintf("%.1f", k.MeanMS)
			}
		}
		return "-"
	}
	return fmt.Sprintf("BENCH identities mqtt_auth=%s clients=%d provision_per_s=%.1f rotation_per_s=%.2f keycloak_floor_per_s=%.2f rotation_ratio=%.3f lockouts=%d "+
		"iot_config_rps=%.0f iot_config_ratio=%.3f keycloak_mb=%.0f postgres_mb=%.0f "+
		"kc_create_client_ms=%s kc_lookup_client_ms=%s kc_read_secret_ms=%s kc_generate_secret_ms=%s kc_invalidate_rotated_ms=%s kc_token_ms=%s",
		p.MQTTAuth, p.Clients, p.ProvisionPerS, p.Rotation.RotationsPerS, p.Rotation.KeycloakFloorPerS, p.Rotation.Ratio, p.Rotation.Lockouts,
		p.IOTConfigRPS, p.IOTConfigRatio, p.KeycloakMB, p.PostgresMB,
		kind("POST", "/clients"), kind("GET", "/clients"), kind("GET", "/client-secret"), kind("POST", "/client-secret"),
		kind("DELETE", "/client-secret/rotated"), kind("POST", "/token"))
}

func (o *IdentitiesOptions) defaults() {
	if len(o.Sizes) == 0 {
		o.Sizes = []int{1000, 10000, 20000, 50000, 100000}
	}
	if o.Budget <= 0 {
		o.Budget = time.Hour
	}
	if o.Batch <= 0 {
		o.Batch = 1000
	}
	if o.MQTTAuth == "" {
		o.MQTTAuth = "dynsec"
	}
}

// identitiesRotation is the rotation measured at every size: the
// fleet_rotation benchmark's grace run.
func identitiesRotation(srv *launch.Server, logf func(string, ...any)) fleetrotation.Options {
	return fleetrotation.Options{
		Mode: "grace", Devices: 1000, Concurrency: fleetConcurrency,
		Offline: 0.05, CrashAfterFetch: 0.02, CrashAfterPersist: 0.01,
		Timeout: 8 * time.Second, FetchTimeout: 3 * time.Second, Retry: 2 * time.Second,
		Server: srv, Log: logf,
	}
}

// Identities grows one espmdm's fleet to each size of o and measures it
// there. It needs Env.Stack started with KeycloakOnPostgres and
// KeycloakMetrics. The fleet is left in place: the stack is the caller's
// to stop.
func Identities(ctx context.Context, env *Env, o IdentitiesOptions) (_ []IdentitiesPoint, err error) {
	o.defaults()
	st := env.Stack
	if st.KeycloakMetricsURL == "" {
		return nil, errors.New("identities: the stack's Keycloak has no metrics (integration.Options.KeycloakMetrics)")
	}
	began := time.Now()
	senv := fleetrotation.ServerEnv(identitiesRotation(nil, nil))
	senv["MQTT_AUTH"] = o.MQTTAuth
	// espmdm keeps its default Keycloak bound here (fleetrotation.Run
	// raises it only for a server of its own): Keycloak keeps its data in
	// the stack's PostgreSQL, its pool sharing max_connections (200) with
	// espmdm's, which grows with KEYCLOAK_MAX_CONCURRENCY (twice it plus 4).
	srv, err := env.startInProcess(ctx, senv)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := srv.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("identities: stop espmdm: %w", serr)
		}
	}()
	c := newClient(4)
	c.Timeout = 15 * time.Minute // a batch of a thousand on a busy machine
	opTok := func() (string, error) { return env.token(ctx, st.OperatorClientID, st.OperatorClientSecret) }
	tok, err := opTok()
	if err != nil {
		return nil, err
	}
	adm := admin{base: srv.Base, tok: tok, c: c}
	modelID, err := adm.createModel(ctx)
	if err != nil {
		return nil, err
	}

	var points []IdentitiesPoint
	have := 0
	rate := 0.0 // devices per second of the last growth
	var perSize time.Duration
	for i, size := range o.Sizes {
		if size <= have {
			continue
		}
		if i > 0 && rate > 0 {
			need := time.Duration(float64(size-have)/rate*float64(time.Second)) + perSize
			if left := o.Budget - time.Since(began); need > left {
				env.logf("identities: stopping at %d clients: growing to %d and measuring would take about %s, %s of the budget is left",
					have, size, need.Round(time.Second), left.Round(time.Second))
				break
			}
		}
		sizeBegan := time.Now()
		kcBefore, err := scrapeKeycloak(ctx, st.KeycloakMetricsURL)
		if err != nil {
			return points, err
		}
		p := IdentitiesPoint{Clients: size, MQTTAuth: o.MQTTAuth}

		// Grow.
		growBegan := time.Now()
		grown := 0
		for have < size {
			n := min(o.Batch, size-have)
			tok, err := opTok() // a batch can outlive a token
			if err != nil {
				return points, err
			}
			body, err := postBatch(ctx, c, srv.Base, tok, modelID, n, map[string]any{}, "0x3000")
			if err != nil {
				return points, fmt.Errorf("identities: %w", err)
			}
			made, failed, err := batchIDs(body)
			if err != nil {
				return points, err
			}
			if failed > 0 {
				env.logf("identities: batch: %d of %d devices failed (errors.csv); growing on", failed, n)
			}
			have += len(made)
			grown += len(made)
			env.logf("identities: %d devices (%.1f/s)", have, float64(grown)/time.Since(growBegan).Seconds())
		}
		p.ProvisionPerS = float64(grown) / time.Since(growBegan).Seconds()
		rate = p.ProvisionPerS
		measureBegan := time.Now()

		// A grace rotation of 1,000 devices among them.
		env.logf("identities: %d clients: rotating 1000 more devices", size)
		if p.Rotation, err = fleetrotation.Run(ctx, st, identitiesRotation(srv, env.logf)); err != nil {
			return points, fmt.Errorf("identities at %d clients: rotation: %w", size, err)
		}
		// GET /iot/config against the bare handler.
		env.logf("identities: %d clients: /iot/config", size)
		r, err := iotConfigOn(ctx, env, srv)
		if err != nil {
			return points, fmt.Errorf("identities at %d clients: iot_config: %w", size, err)
		}
		p.IOTConfigRPS, _ = strconv.ParseFloat(r.Get("rps"), 64)
		p.IOTConfigRatio, _ = strconv.ParseFloat(r.Get("ratio"), 64)

		if p.KeycloakMB, p.PostgresMB, err = stackMemory(st.Dir()); err != nil {
			return points, err
		}
		kcAfter, err := scrapeKeycloak(ctx, st.KeycloakMetricsURL)
		if err != nil {
			return points, err
		}
		p.Admin = requestKinds(kcBefore, kcAfter)
		p.Seconds = time.Since(sizeBegan).Seconds()
		perSize = time.Since(measureBegan)
		points = append(points, p)
		if o.Point != nil {
			o.Point(p)
		}
	}
	return points, nil
}

// ---- Keycloak's request metrics ----

// kcSeries is one scrape: per request kind the count, the sum of
// seconds, and the histogram's cumulative bucket counts by upper bound.
type kcSeries map[string]*kcKind

type kcKind struct {
	count, sum float64
	buckets    map[float64]float64
}

// scrapeKeycloak reads http_server_requests_seconds_* from Keycloak's
// /metrics, summed over status and outcome per method and URI template.
func scrapeKeycloak(ctx context.Context, u string) (kcSeries, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("keycloak metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("keycloak metrics: %s", resp.Status)
	}
	return parseKeycloakMetrics(resp.Body)
}

func parseKeycloakMetrics(r io.Reader) (kcSeries, error) {
	out := kcSeries{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, "{")
		if !ok || !strings.HasPrefix(name, "http_server_requests_seconds_") {
			continue
		}
		labelText, valText, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		labels := parseLabels(labelText)
		v, err := strconv.ParseFloat(strings.Fields(valText)[0], 64)
		if err != nil {
			continue
		}
		key := labels["method"] + " " + labels["uri"]
		k := out[key]
		if k == nil {
			k = &kcKind{buckets: map[float64]float64{}}
			out[key] = k
		}
		switch strings.TrimPrefix(name, "http_server_requests_seconds_") {
		case "count":
			k.count += v
		case "sum":
			k.sum += v
		case "bucket":
			le, err := strconv.ParseFloat(labels["le"], 64)
			if err == nil {
				k.buckets[le] += v
			}
		}
	}
	return out, sc.Err()
}

// parseLabels reads `a="x",b="y"` (values without escaped quotes, as
// Keycloak's are).
func parseLabels(s string) map[string]string {
	m := map[string]string{}
	for s != "" {
		k, rest, ok := strings.Cut(s, `="`)
		if !ok {
			break
		}
		v, rest, _ := strings.Cut(rest, `"`)
		m[strings.TrimSpace(k)] = v
		s = strings.TrimPrefix(rest, ",")
	}
	return m
}

// requestKinds is what happened between two scrapes, by kind, busiest
// first; kinds without requests are left out.
func requestKinds(before, after kcSeries) []RequestKind {
	var out []RequestKind
	for key, a := range after {
		b := before[key]
		if b == nil {
			b = &kcKind{buckets: map[float64]float64{}}
		}
		n := a.count - b.count
		if n <= 0 {
			continue
		}
		k := RequestKind{Kind: key, Count: int64(n), MeanMS: (a.sum - b.sum) / n * 1000}
		var les []float64
		for le := range a.buckets {
			les = append(les, le)
		}
		sort.Float64s(les)
		for _, le := range les {
			if a.buckets[le]-b.buckets[le] >= 0.99*n {
				k.P99MS = le * 1000
				break
			}
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out
}

// ---- memory ----

// stackMemory sums the PSS of the stack's Keycloak JVM and of its
// PostgreSQL processes (the postmaster, whose command line names the
// stack's data directory, and its children), MiB.
func stackMemory(stackDir string) (keycloakMB, postgresMB float64, err error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, err
	}
	type proc struct {
		pid, ppid int
		cmd       string
	}
	var all []proc
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces; cut at the last ')'.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		all = append(all, proc{pid, ppid, strings.ReplaceAll(string(cmd), "\x00", " ")})
	}
	pgData := filepath.Join(stackDir, "postgres")
	kcHome := filepath.Join(stackDir, "keycloak")
	var pgRoots = map[int]bool{}
	for _, p := range all {
		switch {
		case strings.Contains(p.cmd, "java") && strings.Contains(p.cmd, kcHome):
			kb, err := pssKB(p.pid)
			if err != nil {
				return 0, 0, err
			}
			keycloakMB += float64(kb) / 1024
		case strings.Contains(p.cmd, "postgres") && strings.Contains(p.cmd, pgData):
			pgRoots[p.pid] = true
		}
	}
	for _, p := range all {
		if pgRoots[p.pid] || pgRoots[p.ppid] {
			kb, err := pssKB(p.pid)
			if err != nil {
				continue // a backend that ended meanwhile
			}
			postgresMB += float64(kb) / 1024
		}
	}
	if keycloakMB == 0 || postgresMB == 0 {
		return keycloakMB, postgresMB, fmt.Errorf("identities: Keycloak (%.0f MiB) or PostgreSQL (%.0f MiB) process of %s not found", keycloakMB, postgresMB, stackDir)
	}
	return keycloakMB, postgresMB, nil
}

// pssKB is a process's proportional set size, kB.
func pssKB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/smaps_rollup: no Pss", pid)
}

// ---- report ----

// IdentitiesMarkdown is the section docs/benchmarks.md keeps for the
// identities run: a table per size, Keycloak's request kinds, and the
// chart (chart: its file name next to the document, "" for none).
func IdentitiesMarkdown(m Machine, points []IdentitiesPoint, budget time.Duration, chart string) string {
	var b strings.Builder
	auth := "dynsec"
	if len(points) > 0 && points[0].MQTTAuth != "" {
		auth = points[0].MQTTAuth
	}
	fmt.Fprintf(&b, "## identities, MQTT_AUTH=%s: the cost curve to 100,000 identities (`make bench-identities`)\n\n", auth)
	account := " with its broker account"
	if auth == "none" {
		account = " (no broker account)"
	}
	fmt.Fprintf(&b, "Run %s on %s. One espmdm (in the bench process) on a stack whose Keycloak keeps its data in PostgreSQL "+
		"(`--db=postgres`, a database of the stack's PostgreSQL), as in production. The fleet grows through `POST /api/devices/batch` "+
		"(1,000 devices a request, each a Keycloak client"+account+" and a 12 KiB partition in the ZIP); at each size: "+
		"`provision_per_s` is that growth's rate; a grace rotation of 1,000 more devices as the fleet_rotation benchmark, except that "+
		"espmdm keeps `KEYCLOAK_MAX_CONCURRENCY` at its default of 8 "+
		"(`rotation_per_s`, its Keycloak floor measured in the same run at that size, `rotation_ratio`, lockouts), triggered for their "+
		"model only (`POST /api/rotation/trigger?device_model_id=`) among the others; `GET /iot/config` as the iot_config benchmark "+
		"(`iot_config_ratio` against a bare Fiber handler); the proportional set size of the Keycloak JVM and of all PostgreSQL "+
		"processes; and Keycloak's own request latencies by kind (its `http_server_requests_seconds`, mean over the size's growth and "+
		"measurements). The run stops at the first size that would not fit in %s at the measured growth rate.\n\n",
		time.Now().UTC().Format("2006-01-02"), m.Summary(), budget)
	b.WriteString("| clients | provision/s | rotation/s | floor/s | rotation ratio | lockouts | /iot/config rps | /iot/config ratio | Keycloak MiB | PostgreSQL MiB | minutes |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range points {
		fmt.Fprintf(&b, "| %d | %.1f | %.2f | %.2f | %.3f | %d | %.0f | %.3f | %.0f | %.0f | %.1f |\n",
			p.Clients, p.ProvisionPerS, p.Rotation.RotationsPerS, p.Rotation.KeycloakFloorPerS, p.Rotation.Ratio, p.Rotation.Lockouts,
			p.IOTConfigRPS, p.IOTConfigRatio, p.KeycloakMB, p.PostgresMB, p.Seconds/60)
	}
	b.WriteString("\nKeycloak's requests by kind, mean ms (99th percentile bucket) at each size:\n\n")
	kinds := map[string]bool{}
	var order []string
	for _, p := range points {
		for _, k := range p.Admin {
			if k.Count >= 100 && !kinds[k.Kind] {
				kinds[k.Kind] = true
				order = append(order, k.Kind)
			}
		}
	}
	sort.Strings(order)
	b.WriteString("| request |")
	for _, p := range points {
		fmt.Fprintf(&b, " %d |", p.Clients)
	}
	b.WriteString("\n|---|")
	for range points {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, kind := range order {
		fmt.Fprintf(&b, "| `%s` |", kind)
		for _, p := range points {
			cell := " |"
			for _, k := range p.Admin {
				if k.Kind == kind {
					cell = fmt.Sprintf(" %.1f (%.0f) |", k.MeanMS, k.P99MS)
				}
			}
			b.WriteString(cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n```\n")
	for _, p := range points {
		b.WriteString(p.Line() + "\n")
	}
	b.WriteString("```\n")
	if chart != "" {
		fmt.Fprintf(&b, "\n![rates relative to the first size, against clients](%s)\n", chart)
	}
	return b.String()
}

// WriteIdentitiesChart draws each rate relative to its value at the first
// size against the number of clients: where a line falls below 1, that
// work gets dearer as the realm grows.
func WriteIdentitiesChart(w io.Writer, points []IdentitiesPoint) error {
	if len(points) == 0 {
		return errors.New("identities: no points to chart")
	}
	rates := []struct {
		label string
		at    func(IdentitiesPoint) float64
	}{
		{"provisioning", func(p IdentitiesPoint) float64 { return p.ProvisionPerS }},
		{"rotation", func(p IdentitiesPoint) float64 { return p.Rotation.RotationsPerS }},
		{"keycloak floor", func(p IdentitiesPoint) float64 { return p.Rotation.KeycloakFloorPerS }},
		{"iot config", func(p IdentitiesPoint) float64 { return p.IOTConfigRPS }},
	}
	var series []fleetrotation.Series
	for i, r := range rates {
		first := r.at(points[0])
		if first <= 0 {
			continue
		}
		s := fleetrotation.Series{Label: r.label, Color: fleetrotation.SeriesColor(i)}
		s.Points = append(s.Points, [2]float64{math.NaN(), 1.2})
		for _, p := range points {
			s.Points = append(s.Points, [2]float64{float64(p.Clients), r.at(p) / first})
		}
		series = append(series, s)
	}
	return fleetrotation.WritePlot(w, "CLIENTS IN THE REALM", "RATE / RATE AT "+strconv.Itoa(points[0].Clients), series)
}

// Section markers of docs/benchmarks.md: each identities run (one per
// MQTT_AUTH) writes between its pair, and `make bench`, which rewrites the
// rest, keeps them.
func identitiesMarkers(name string) (begin, end string) {
	return "<!-- bench-identities:" + name + ":begin -->", "<!-- bench-identities:" + name + ":end -->"
}

// IdentitiesSections is every identities section of doc, markers
// included, in order; "" when it has none.
func IdentitiesSections(doc string) string {
	var out []string
	for {
		i := strings.Index(doc, "<!-- bench-identities:")
		if i < 0 {
			break
		}
		name, _, _ := strings.Cut(doc[i+len("<!-- bench-identities:"):], ":")
		s := identitiesSection(doc, name)
		if s == "" {
			break
		}
		out = append(out, s)
		doc = doc[strings.Index(doc, s)+len(s):]
	}
	return strings.Join(out, "\n\n")
}

func identitiesSection(doc, name string) string {
	begin, end := identitiesMarkers(name)
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		return ""
	}
	return doc[i : j+len(end)]
}

// WithIdentitiesSection is doc with its identities section called name
// replaced by body (appended when it has none).
func WithIdentitiesSection(doc, name, body string) string {
	begin, end := identitiesMarkers(name)
	section := begin + "\n" + body + end
	if old := identitiesSection(doc, name); old != "" {
		return strings.Replace(doc, old, section, 1)
	}
	if doc != "" && !strings.HasSuffix(doc, "\n\n") {
		doc = strings.TrimRight(doc, "\n") + "\n\n"
	}
	return doc + section + "\n"
}
