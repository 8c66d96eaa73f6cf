package mqtt

import (
	"context"
	"io"
	"sync"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// trackedSession is paho's session state plus the set of PUBLISH packets
// this process added that the broker has not acknowledged yet, so Stop can
// wait for the PUBACKs before disconnecting. (Closing the socket with a
// PUBACK unread makes the kernel reset the connection, and the broker may
// drop messages it had received but not yet read.)
type trackedSession struct {
	*state.State

	mu     sync.Mutex
	msgs   map[*inflight]struct{}
	idleCh chan struct{} // closed while msgs is empty
	expiry uint32        // session expiry interval of the current connection
}

// inflight is one PUBLISH waiting for its PUBACK.
type inflight struct {
	resp    chan<- packets.ControlPacket // paho's channel for the answer
	answer  chan packets.ControlPacket   // the session's answer to us
	dropped chan struct{}                // closed when the answer will never come
	once    sync.Once
}

func newTrackedSession(s *state.State) *trackedSession {
	idle := make(chan struct{})
	close(idle)
	return &trackedSession{State: s, msgs: map[*inflight]struct{}{}, idleCh: idle}
}

// AddToSession tracks a PUBLISH until the session reports it acknowledged
// (or removed) and passes that report on to resp.
func (s *trackedSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	if p.Type() != packets.PUBLISH {
		return s.State.AddToSession(ctx, p, resp)
	}
	m := &inflight{resp: resp, answer: make(chan packets.ControlPacket, 1), dropped: make(chan struct{})}
	s.mu.Lock()
	if len(s.msgs) == 0 {
		s.idleCh = make(chan struct{})
	}
	s.msgs[m] = struct{}{}
	s.mu.Unlock()
	if err := s.State.AddToSession(ctx, p, m.answer); err != nil {
		s.finish(m, packets.ControlPacket{}, false)
		return err
	}
	go func() {
		select {
		case r := <-m.answer:
			s.finish(m, r, true)
		case <-m.dropped:
		}
	}()
	return nil
}

// ConAckReceived forgets the tracked messages when the broker has no
// session for us: paho's state then discards its in-flight messages (as
// MQTT requires) without answering them.
func (s *trackedSession) ConAckReceived(conn io.Writer, cp *packets.Connect, ca *packets.Connack) error {
	var lost []*inflight
	if !ca.SessionPresent {
		lost = s.tracked()
	}
	// The session expiry in force, as paho's state works it out.
	expiry := uint32(0)
	if ca.Properties != nil && ca.Properties.SessionExpiryInterval != nil {
		expiry = *ca.Properties.SessionExpiryInterval
	} else if cp.Properties != nil && cp.Properties.SessionExpiryInterval != nil {
		expiry = *cp.Properties.SessionExpiryInterval
	}
	s.mu.Lock()
	s.expiry = expiry
	s.mu.Unlock()
	err := s.State.ConAckReceived(conn, cp, ca)
	s.drop(lost)
	return err
}

// ConnectionLost forgets the tracked messages when the session ends with
// the connection (a session expiry of zero, which the broker can impose):
// paho's state then discards them without answering.
func (s *trackedSession) ConnectionLost(dp *packets.Disconnect) error {
	s.mu.Lock()
	if dp != nil && dp.Properties != nil && dp.Properties.SessionExpiryInterval != nil {
		s.expiry = *dp.Properties.SessionExpiryInterval
	}
	ends := s.expiry == 0
	s.mu.Unlock()
	var lost []*inflight
	if ends {
		lost = s.tracked()
	}
	err := s.State.ConnectionLost(dp)
	s.drop(lost)
	return err
}

func (s *trackedSession) tracked() []*inflight {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ms []*inflight
	for m := range s.msgs {
		ms = append(ms, m)
	}
	return ms
}

func (s *trackedSession) drop(ms []*inflight) {
	for _, m := range ms {
		s.finish(m, packets.ControlPacket{}, true)
	}
}

// finish stops tracking m, once, telling paho (when report is set) with a
// send that never blocks: paho's channel is buffered and not always read.
func (s *trackedSession) finish(m *inflight, r packets.ControlPacket, report bool) {
	m.once.Do(func() {
		close(m.dropped)
		if report {
			select {
			case m.resp <- r:
			default:
			}
		}
		s.mu.Lock()
		delete(s.msgs, m)
		if len(s.msgs) == 0 {
			close(s.idleCh)
		}
		s.mu.Unlock()
	})
}

// idle returns a channel that is closed once no PUBLISH is in flight.
func (s *trackedSession) idle() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idleCh
}
