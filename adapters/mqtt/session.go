package mqtt

import (
	"context"
	"sync"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// trackedSession is paho's session state plus a count of the PUBLISH
// packets this process added that the broker has not acknowledged yet, so
// Stop can wait for the PUBACKs before disconnecting. (Closing the socket
// with a PUBACK unread makes the kernel reset the connection, and the broker
// may drop messages it had received but not yet read.)
type trackedSession struct {
	*state.State

	mu       sync.Mutex
	inflight int
	idleCh   chan struct{} // closed while inflight == 0
}

func newTrackedSession(s *state.State) *trackedSession {
	idle := make(chan struct{})
	close(idle)
	return &trackedSession{State: s, idleCh: idle}
}

// AddToSession counts a PUBLISH until the session reports it acknowledged
// (or dropped) on resp.
func (s *trackedSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	if p.Type() != packets.PUBLISH {
		return s.State.AddToSession(ctx, p, resp)
	}
	done := make(chan packets.ControlPacket, 1)
	s.add(1)
	if err := s.State.AddToSession(ctx, p, done); err != nil {
		s.add(-1)
		return err
	}
	go func() {
		r := <-done // the session sends exactly once: PUBACK, removal or Close
		resp <- r
		s.add(-1)
	}()
	return nil
}

func (s *trackedSession) add(d int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight == 0 && d > 0 {
		s.idleCh = make(chan struct{})
	}
	s.inflight += d
	if s.inflight == 0 {
		close(s.idleCh)
	}
}

// idle returns a channel that is closed once no PUBLISH is in flight.
func (s *trackedSession) idle() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idleCh
}
