// Package clock implements ports.Clock on the system clock.
package clock

import (
	"time"

	"github.com/espmdm/espmdm/ports"
)

// System tells the time from the operating system, in UTC.
type System struct{}

var _ ports.Clock = (*System)(nil)

// New returns the system clock.
func New() System { return System{} }

// Now returns the current time in UTC. Like every UTC conversion it drops
// the monotonic reading, so values compare and serialise as wall-clock
// instants (what gets stored and sent).
func (System) Now() time.Time { return time.Now().UTC() }
