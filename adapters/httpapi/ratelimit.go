package httpapi

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// RateLimit is a token bucket: PerMinute requests a minute on average,
// Burst at once. A zero PerMinute takes the default; a negative one turns
// the limit off.
type RateLimit struct {
	PerMinute float64
	Burst     int
}

// Defaults of the two rate limits (see Config).
var (
	DefaultDeviceRate = RateLimit{PerMinute: 300, Burst: 60}
	DefaultUnauthRate = RateLimit{PerMinute: 120, Burst: 100}
)

func (r RateLimit) withDefault(d RateLimit) RateLimit {
	if r.PerMinute == 0 {
		return d
	}
	if r.Burst <= 0 {
		r.Burst = d.Burst
	}
	return r
}

// maxBuckets bounds the memory of a limiter facing many addresses: past
// it, idle buckets are dropped, and new keys share one bucket until there
// is room again.
const maxBuckets = 100_000

// limiter keeps one token bucket per key (a device's client id, a client
// address). It is safe for concurrent use.
type limiter struct {
	perSecond float64
	burst     float64
	now       func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// newLimiter returns nil (no limit) for a negative rate.
func newLimiter(r RateLimit) *limiter {
	if r.PerMinute < 0 {
		return nil
	}
	return &limiter{
		perSecond: r.PerMinute / 60, burst: float64(r.Burst), now: time.Now,
		buckets: map[string]*bucket{},
	}
}

// refill brings b up to date and returns it; callers hold mu.
func (l *limiter) refill(key string, now time.Time) *bucket {
	b, ok := l.buckets[key]
	if !ok {
		// Sweeping is O(buckets): once a minute, or once a second while
		// the map is full.
		if since := now.Sub(l.lastSweep); since > time.Minute || (len(l.buckets) >= maxBuckets && since > time.Second) {
			l.sweep(now)
		}
		if len(l.buckets) >= maxBuckets {
			key = "" // the shared overflow bucket
			if _, shared := l.buckets[key]; shared {
				return l.refill(key, now)
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
		return b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+el*l.perSecond)
		b.last = now
	}
	return b
}

// sweep drops buckets that have filled up again: forgetting them changes
// nothing. Callers hold mu.
func (l *limiter) sweep(now time.Time) {
	l.lastSweep = now
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.perSecond >= l.burst {
			delete(l.buckets, k)
		}
	}
}

// take spends one request of key's budget. When none is left it reports
// how long until there is one.
func (l *limiter) take(key string) (ok bool, retry time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(key, l.now())
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, l.wait(b)
}

// check reports whether key has budget left, spending nothing.
func (l *limiter) check(key string) (ok bool, retry time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.refill(key, l.now())
	if b.tokens >= 1 {
		return true, 0
	}
	return false, l.wait(b)
}

func (l *limiter) wait(b *bucket) time.Duration {
	if l.perSecond <= 0 {
		return time.Hour
	}
	return time.Duration((1 - b.tokens) / l.perSecond * float64(time.Second))
}

// rateLimited is the 429 of a spent budget, with Retry-After in whole
// seconds (at least 1).
func rateLimited(who string, retry time.Duration) error {
	secs := max(int64(math.Ceil(retry.Seconds())), 1)
	return &httpError{
		status: http.StatusTooManyRequests, kind: "rate-limited",
		detail: fmt.Sprintf("too many requests %s; retry after %d s", who, secs),
		header: "Retry-After", value: strconv.FormatInt(secs, 10),
	}
}
