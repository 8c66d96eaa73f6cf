package fleetrotation

import (
	"bytes"
	"image/png"
	"regexp"
	"testing"
)

func TestBenchLine(t *testing.T) {
	r := Result{Mode: "grace", Devices: 1000, Concurrency: 10, Seconds: 61.25, RotationsPerS: 15.5, Lockouts: 0,
		LockoutDeviceS: 0, P50ms: 230.4, P99ms: 10500, KeycloakFloorPerS: 100, Ratio: 0.155, Projected100kH: 1.79}
	got := r.BenchLine()
	want := "BENCH fleet_rotation mode=grace devices=1000 concurrency=10 seconds=61.2 rotations_per_s=15.50 lockouts=0 lockout_device_s=0.0 p50_ms=230 p99_ms=10500 keycloak_floor_per_s=100.00 ratio=0.155 projected_100k_h=1.79"
	if got != want {
		t.Fatalf("BenchLine\n got %s\nwant %s", got, want)
	}
	re := regexp.MustCompile(`^BENCH fleet_rotation( [a-z0-9_]+=[^ ]+)+$`)
	if !re.MatchString(got) {
		t.Fatalf("BenchLine %q is not BENCH name key=value...", got)
	}
}

func TestWriteChart(t *testing.T) {
	runs := []Result{
		{Mode: "grace", Concurrency: 10, Online: 950, RotationsPerS: 15, Progress: []Point{{0, 0}, {10, 300}, {30, 900}, {40, 950}}},
		{Mode: "restore", Concurrency: 10, Online: 950, RotationsPerS: 12, Progress: []Point{{0, 0}, {20, 300}, {50, 950}}},
	}
	var buf bytes.Buffer
	if err := WriteChart(&buf, runs); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != chartW || b.Dy() != chartH {
		t.Fatalf("size %v, want %dx%d", b, chartW, chartH)
	}
	counts := map[[3]uint32]int{}
	other := 0
	for y := 0; y < chartH; y++ {
		for x := 0; x < chartW; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			k := [3]uint32{r >> 8, g >> 8, b >> 8}
			counts[k]++
			if k != [3]uint32{255, 255, 255} {
				other++
			}
		}
	}
	for i := range runs {
		c := lineColor(runs, i)
		if n := counts[[3]uint32{uint32(c.R), uint32(c.G), uint32(c.B)}]; n < 100 {
			t.Errorf("line of %s: %d pixels of its colour", runs[i].Mode, n)
		}
	}
	if other < 1000 {
		t.Errorf("only %d non-background pixels", other)
	}
	if err := WriteChart(&buf, nil); err == nil {
		t.Error("WriteChart of no runs: no error")
	}
}

func TestNiceStep(t *testing.T) {
	for _, c := range []struct{ max, want float64 }{{1, 0.2}, {47, 10}, {1000, 200}, {61, 20}, {3, 1}} {
		if got := niceStep(c.max); got != c.want {
			t.Errorf("niceStep(%v) = %v, want %v", c.max, got, c.want)
		}
	}
}

func TestBehaviours(t *testing.T) {
	o := Options{Devices: 1000, Offline: 0.05, CrashAfterFetch: 0.02, CrashAfterPersist: 0.01}
	var off, cf, cp int
	for _, b := range behaviours(o) {
		switch {
		case b.Offline:
			off++
		case b.Crash == 1:
			cf++
		case b.Crash == 2:
			cp++
		}
	}
	if off != 50 || cf != 20 || cp != 10 {
		t.Fatalf("offline %d, crash after fetch %d, after persist %d; want 50, 20, 10", off, cf, cp)
	}
}
