package portstest

import (
	"sync"
	"time"

	"github.com/espmdm/espmdm/ports"
)

// Clock is a ports.Clock whose time only moves when told to.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

var _ ports.Clock = (*Clock)(nil)

// NewClock returns a Clock showing t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// Advance moves the clock forward by d and returns the new time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// nowFunc returns clock.Now, or the wall clock when clock is nil.
func nowFunc(clock ports.Clock) func() time.Time {
	if clock == nil {
		return func() time.Time { return time.Now().UTC() }
	}
	return clock.Now
}
