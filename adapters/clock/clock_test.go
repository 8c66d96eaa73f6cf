package clock_test

import (
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/clock"
)

func TestNowIsCurrentUTC(t *testing.T) {
	before := time.Now()
	got := clock.New().Now()
	after := time.Now()
	if got.Location() != time.UTC {
		t.Errorf("Now().Location() = %v, want UTC", got.Location())
	}
	if got.Before(before.Truncate(time.Microsecond)) || got.After(after) {
		t.Errorf("Now() = %v, want between %v and %v", got, before, after)
	}
}
