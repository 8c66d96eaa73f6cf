package httpapi

import (
	"strconv"
	"testing"
	"time"
)

func TestLimiterRefillsAndForgets(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newLimiter(RateLimit{PerMinute: 60, Burst: 2})
	l.now = func() time.Time { return now }
	for i := range 2 {
		if ok, _ := l.take("a"); !ok {
			t.Fatalf("take %d within the burst refused", i+1)
		}
	}
	ok, retry := l.take("a")
	if ok || retry != time.Second {
		t.Fatalf("third take = %v, retry %s; want refused, 1s", ok, retry)
	}
	now = now.Add(1500 * time.Millisecond)
	if ok, _ := l.take("a"); !ok {
		t.Fatalf("refused after 1.5 s at 1/s")
	}
	// A bucket full again is forgotten at the next sweep.
	now = now.Add(time.Hour)
	l.take("b")
	if _, kept := l.buckets["a"]; kept {
		t.Errorf("an idle, refilled bucket survived the sweep")
	}
}

func TestLimiterMemoryIsBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newLimiter(RateLimit{PerMinute: 1, Burst: 1})
	l.now = func() time.Time { return now }
	for i := range maxBuckets + 500 {
		l.take("10.0." + strconv.Itoa(i))
	}
	if n := len(l.buckets); n > maxBuckets+1 {
		t.Fatalf("%d buckets, want at most %d", n, maxBuckets+1)
	}
	// Past the bound, new addresses share one bucket: the first is let
	// through, the next refused.
	if ok, _ := l.take("new-1"); ok {
		t.Errorf("new address past the bound: the shared bucket was not spent")
	}
	if newLimiter(RateLimit{PerMinute: -1}) != nil {
		t.Errorf("a negative rate is a limiter")
	}
	var off *limiter
	if ok, _ := off.take("x"); !ok {
		t.Errorf("no limiter refused a request")
	}
}
