package bench

import (
	"strings"
	"testing"
	"time"
)

// These tests need no stack.

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.1, time.Millisecond}} {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("Percentile(1..100ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if s[0] != 100*time.Millisecond {
		t.Error("Percentile sorted its argument")
	}
	if got := Percentile(nil, 99); got != 0 {
		t.Errorf("Percentile(nil) = %v, want 0", got)
	}
	if got := Percentile([]time.Duration{7}, 99); got != 7 {
		t.Errorf("Percentile of one sample = %v, want it", got)
	}
}

func TestLine(t *testing.T) {
	var r Result
	r.Add("rps", 1811.54, "")
	r.Add("p99_ms", 19400*time.Microsecond, "")
	r.Add("ratio", 0.12968, "")
	r.Add("devices", 100, "")
	r.Add("host", "a b", "")
	want := "BENCH iot_config rps=1811.5 p99_ms=19.40 ratio=0.130 devices=100 host=a_b"
	if got := Line("iot_config", r); got != want {
		t.Errorf("Line = %q, want %q", got, want)
	}
	if r.Get("ratio") != "0.130" || r.Get("missing") != "" {
		t.Errorf("Get: %q %q", r.Get("ratio"), r.Get("missing"))
	}
}

func TestSelect(t *testing.T) {
	all := []Scenario{{Name: "a"}, {Name: "b"}, {Name: "c"}}
	got, err := Select(all, "c, a")
	if err != nil || len(got) != 2 || got[0].Name != "c" || got[1].Name != "a" {
		t.Errorf("Select(c, a) = %v, %v", got, err)
	}
	if got, err := Select(all, ""); err != nil || len(got) != 3 {
		t.Errorf("Select('') = %v, %v", got, err)
	}
	if _, err := Select(all, "x"); err == nil || !strings.Contains(err.Error(), "a, b, c") {
		t.Errorf("Select(x) error = %v, want one naming the scenarios", err)
	}
}
