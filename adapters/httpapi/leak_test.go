package httpapi_test

import (
	"testing"

	"go.uber.org/goleak"
)

// fasthttpBackground are fasthttp's own goroutines that are not leaks: the
// process-wide Date header ticker, started once, and the worker-pool
// cleaner, which sleeps out its 10 s idle period after the server stops
// before it sees the stop.
var fasthttpBackground = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
}

// TestMain fails the run when a test leaves a goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, fasthttpBackground...) }
