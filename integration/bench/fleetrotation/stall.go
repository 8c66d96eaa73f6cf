package fleetrotation

import (
	"os"
	"runtime/pprof"
	"time"
)

// StallDumpEnv names a file: when set, a rotation that confirms no device
// for stallAfter has every goroutine of the bench process (the fleet and
// an in-process espmdm) written there, once, to see what holds it.
const StallDumpEnv = "ESPMDM_BENCH_STALL_DUMP"

const stallAfter = 3 * time.Second

// stallDump watches the confirmed count of a rotation.
type stallDump struct {
	path   string
	after  time.Duration
	last   int
	since  time.Time
	dumped bool
}

func newStallDump(path string) *stallDump {
	return &stallDump{path: path, after: stallAfter, last: -1, since: time.Now()}
}

// observe takes the confirmed count; when it has not moved for s.after
// it writes the goroutine dump (once).
func (s *stallDump) observe(confirmed int, logf func(string, ...any)) {
	if s.path == "" || s.dumped {
		return
	}
	if confirmed != s.last {
		s.last, s.since = confirmed, time.Now()
		return
	}
	if time.Since(s.since) < s.after {
		return
	}
	s.dumped = true
	f, err := os.Create(s.path)
	if err != nil {
		logf("fleetrotation: stall dump: %v", err)
		return
	}
	defer f.Close()
	if err := pprof.Lookup("goroutine").WriteTo(f, 1); err != nil {
		logf("fleetrotation: stall dump: %v", err)
		return
	}
	logf("fleetrotation: no device confirmed for %s at %d: goroutines written to %s", s.after, confirmed, s.path)
}
