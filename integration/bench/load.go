package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// LoadResult is what a closed-loop load measured.
type LoadResult struct {
	Requests  int             // successful requests
	Errors    int             // failed requests (transport error or unexpected status)
	FirstErr  error           // the first failure
	Elapsed   time.Duration   // wall time of the measured run
	Latencies []time.Duration // of the successful requests
}

// RPS is successful requests per second.
func (r LoadResult) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// ClosedLoop runs workers goroutines that each send one request after the
// other (a new one as soon as the last answered) for d, and measures them.
// newReq builds a request; a response counts as a success when its status
// is 200, and its body is read to the end.
func ClosedLoop(ctx context.Context, c *http.Client, workers int, d time.Duration, newReq func(context.Context) (*http.Request, error)) LoadResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type part struct {
		lat   []time.Duration
		errs  int
		first error
	}
	parts := make([]part, workers)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &parts[w]
			p.lat = make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				err := once(ctx, c, newReq)
				if err != nil {
					p.errs++
					if p.first == nil {
						p.first = err
					}
					continue
				}
				p.lat = append(p.lat, time.Since(t0))
			}
		}()
	}
	wg.Wait()
	res := LoadResult{Elapsed: time.Since(start)}
	for _, p := range parts {
		res.Latencies = append(res.Latencies, p.lat...)
		res.Errors += p.errs
		if res.FirstErr == nil {
			res.FirstErr = p.first
		}
	}
	res.Requests = len(res.Latencies)
	return res
}

func once(ctx context.Context, c *http.Client, newReq func(context.Context) (*http.Request, error)) error {
	req, err := newReq(ctx)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: status %d", req.Method, req.URL.Path, resp.StatusCode)
	}
	return nil
}

// Sequential sends n requests one after the other and returns their
// latencies; the first failure stops it.
func Sequential(ctx context.Context, c *http.Client, n int, newReq func(context.Context) (*http.Request, error)) ([]time.Duration, error) {
	lat := make([]time.Duration, 0, n)
	for range n {
		t0 := time.Now()
		if err := once(ctx, c, newReq); err != nil {
			return lat, err
		}
		lat = append(lat, time.Since(t0))
	}
	return lat, nil
}

// parallel runs job(i) for i in [0, n) on workers goroutines and returns
// the per-job latencies, the wall time and the first error (which stops
// the hand-out of further jobs).
func parallel(ctx context.Context, n, workers int, job func(ctx context.Context, i int) error) ([]time.Duration, time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	lat := make([]time.Duration, n)
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				t0 := time.Now()
				if err := job(ctx, i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
						cancel()
					}
					mu.Unlock()
					continue
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
feed:
	for i := range n {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	return lat, time.Since(start), first
}
