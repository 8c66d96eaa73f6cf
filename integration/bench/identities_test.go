package bench

import (
	"bytes"
	"image/png"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/integration/bench/fleetrotation"
)

// These tests need no stack.

const metricsBefore = `# TYPE http_server_requests_seconds histogram
http_server_requests_seconds_count{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients"} 10.0
http_server_requests_seconds_sum{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients"} 0.5
http_server_requests_seconds_bucket{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients",le="0.05"} 10.0
http_server_requests_seconds_bucket{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients",le="0.1"} 10.0
http_server_requests_seconds_bucket{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients",le="+Inf"} 10.0
jvm_threads_peak_threads 113.0
`

const metricsAfter = `http_server_requests_seconds_count{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients"} 110.0
http_server_requests_seconds_count{method="POST",outcome="CLIENT_ERROR",status="409",uri="/admin/realms/{realm}/clients"} 10.0
http_server_requests_seconds_sum{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients"} 6.5
http_server_requests_seconds_sum{method="POST",outcome="CLIENT_ERROR",status="409",uri="/admin/realms/{realm}/clients"} 0.2
http_server_requests_seconds_bucket{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients",le="0.05"} 60.0
http_server_requests_seconds_bucket{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients",le="0.1"} 108.0
http_server_requests_seconds_bucket{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients",le="0.2"} 110.0
http_server_requests_seconds_bucket{method="POST",outcome="SUCCESS",status="201",uri="/admin/realms/{realm}/clients",le="+Inf"} 110.0
http_server_requests_seconds_count{method="GET",outcome="SUCCESS",status="200",uri="/realms/{realm}/.well-known/openid-configuration"} 3.0
`

func TestRequestKinds(t *testing.T) {
	before, err := parseKeycloakMetrics(strings.NewReader(metricsBefore))
	if err != nil {
		t.Fatal(err)
	}
	after, err := parseKeycloakMetrics(strings.NewReader(metricsAfter))
	if err != nil {
		t.Fatal(err)
	}
	kinds := requestKinds(before, after)
	if len(kinds) != 2 {
		t.Fatalf("kinds = %+v, want 2", kinds)
	}
	k := kinds[0]
	// 110 requests (100 + 10 refused) in 6.2 s.
	if k.Kind != "POST /admin/realms/{realm}/clients" || k.Count != 110 {
		t.Errorf("busiest kind = %+v, want 110 POST .../clients", k)
	}
	if want := 6.2 / 110 * 1000; k.MeanMS < want-0.01 || k.MeanMS > want+0.01 {
		t.Errorf("mean = %.3f ms, want %.3f", k.MeanMS, want)
	}
	// Of the 100 successes since, 98 within 0.1 s: the 99th percentile is in the 0.2 s bucket.
	if k.P99MS != 200 {
		t.Errorf("p99 bucket = %v ms, want 200", k.P99MS)
	}
}

func TestIdentitiesSection(t *testing.T) {
	doc := "# Benchmarks\n\nfigures\n"
	one := WithIdentitiesSection(doc, "dynsec", "## identities\n\nfirst\n")
	if !strings.HasPrefix(one, doc) || !strings.Contains(one, "first") {
		t.Fatalf("appended section: %q", one)
	}
	two := WithIdentitiesSection(one, "dynsec", "## identities\n\nsecond\n")
	begin, end := identitiesMarkers("dynsec")
	if strings.Contains(two, "first") || !strings.Contains(two, "second") || strings.Count(two, begin) != 1 {
		t.Fatalf("replaced section: %q", two)
	}
	three := WithIdentitiesSection(two, "none", "## identities none\n\nthird\n")
	got := IdentitiesSections(three)
	if !strings.HasPrefix(got, begin) || !strings.Contains(got, end) || !strings.Contains(got, "second") || !strings.Contains(got, "third") {
		t.Errorf("IdentitiesSections = %q", got)
	}
	if IdentitiesSections(doc) != "" {
		t.Error("a document without the markers has a section")
	}
}

func TestIdentitiesReport(t *testing.T) {
	points := []IdentitiesPoint{
		{Clients: 1000, ProvisionPerS: 80, IOTConfigRPS: 7000, IOTConfigRatio: 0.4, KeycloakMB: 700, PostgresMB: 200,
			Rotation: fleetrotation.Result{RotationsPerS: 60, KeycloakFloorPerS: 120, Ratio: 0.5},
			Admin:    []RequestKind{{Kind: "POST /admin/realms/{realm}/clients", Count: 1000, MeanMS: 30, P99MS: 100}}},
		{Clients: 20000, MQTTAuth: "dynsec", ProvisionPerS: 60, IOTConfigRPS: 6900, IOTConfigRatio: 0.39, KeycloakMB: 900, PostgresMB: 300,
			Rotation: fleetrotation.Result{RotationsPerS: 50, KeycloakFloorPerS: 110, Ratio: 0.45},
			Admin:    []RequestKind{{Kind: "POST /admin/realms/{realm}/clients", Count: 19000, MeanMS: 40, P99MS: 250}}},
	}
	line := points[1].Line()
	for _, want := range []string{"BENCH identities mqtt_auth=dynsec clients=20000 ", "provision_per_s=60.0", "rotation_ratio=0.450", "kc_create_client_ms=40.0", "kc_token_ms=-"} {
		if !strings.Contains(line, want) {
			t.Errorf("Line() = %q, want %q in it", line, want)
		}
	}
	md := IdentitiesMarkdown(Machine{CPU: "cpu", Cores: 2}, points, 0, "identities.png")
	for _, want := range []string{"| 20000 | 60.0 |", "`POST /admin/realms/{realm}/clients` | 30.0 (100) | 40.0 (250) |", "![", line} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	var buf bytes.Buffer
	if err := WriteIdentitiesChart(&buf, points); err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(&buf); err != nil {
		t.Errorf("chart is not a PNG: %v", err)
	}
	if err := WriteIdentitiesChart(&buf, nil); err == nil {
		t.Error("a chart of no points: no error")
	}
}
