package mqtt

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/session/state"
)

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// connect makes the wrapped paho session state "connected", with a
// session expiry of an hour.
func connect(t *testing.T, s *trackedSession, sessionPresent bool) {
	t.Helper()
	expiry := uint32(3600)
	cp := &packets.Connect{Properties: &packets.Properties{SessionExpiryInterval: &expiry}}
	if err := s.ConAckReceived(io.Discard, cp, &packets.Connack{SessionPresent: sessionPresent}); err != nil {
		t.Fatalf("ConAckReceived: %v", err)
	}
}

func addPublish(t *testing.T, s *trackedSession) (*packets.Publish, chan packets.ControlPacket) {
	t.Helper()
	p := &packets.Publish{QoS: 1, Topic: "iotsupport/x/rotation"}
	resp := make(chan packets.ControlPacket, 1)
	if err := s.AddToSession(context.Background(), p, resp); err != nil {
		t.Fatalf("AddToSession: %v", err)
	}
	return p, resp
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: still waiting", what)
	}
}

func TestTrackedSessionPuback(t *testing.T) {
	s := newTrackedSession(state.NewInMemory())
	if !isClosed(s.idle()) {
		t.Fatal("new session not idle")
	}
	connect(t, s, false)
	p1, resp1 := addPublish(t, s)
	p2, _ := addPublish(t, s)
	idle := s.idle()
	if isClosed(idle) {
		t.Fatal("idle with two messages in flight")
	}
	for i, p := range []*packets.Publish{p1, p2} {
		ack := packets.NewControlPacket(packets.PUBACK)
		ack.Content.(*packets.Puback).PacketID = p.PacketID
		if err := s.PacketReceived(ack, nil); err != nil {
			t.Fatalf("PUBACK %d: %v", i, err)
		}
		if i == 0 {
			select {
			case r := <-resp1:
				if r.Type != packets.PUBACK {
					t.Errorf("paho got packet type %d, want PUBACK", r.Type)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("PUBACK not passed on to paho")
			}
		}
	}
	waitClosed(t, idle, "idle after both PUBACKs")
}

// A broker without our session makes paho's state drop in-flight messages
// silently; the tracking must not wait for them forever.
func TestTrackedSessionDroppedBySessionLoss(t *testing.T) {
	s := newTrackedSession(state.NewInMemory())
	connect(t, s, false)
	_, resp := addPublish(t, s)
	idle := s.idle()
	if err := s.ConnectionLost(nil); err != nil {
		t.Fatal(err)
	}
	if isClosed(idle) {
		t.Fatal("idle after a connection loss: the message is still in the session")
	}
	connect(t, s, false)
	waitClosed(t, idle, "idle after reconnecting without a session")
	select {
	case <-resp:
	default:
		t.Error("paho's channel got no answer for the dropped message")
	}
}

func TestTrackedSessionKeptWithSessionPresent(t *testing.T) {
	s := newTrackedSession(state.NewInMemory())
	connect(t, s, false)
	p, _ := addPublish(t, s)
	if err := s.ConnectionLost(nil); err != nil {
		t.Fatal(err)
	}
	connect(t, s, true) // the message is resent and still awaits its PUBACK
	if isClosed(s.idle()) {
		t.Fatal("idle while the resent message awaits its PUBACK")
	}
	ack := packets.NewControlPacket(packets.PUBACK)
	ack.Content.(*packets.Puback).PacketID = p.PacketID
	if err := s.PacketReceived(ack, nil); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, s.idle(), "idle after the PUBACK of the resent message")
}

// A broker may cut the session expiry to zero in its CONNACK; paho's state
// then drops in-flight messages silently when the connection is lost.
func TestTrackedSessionDroppedByZeroExpiry(t *testing.T) {
	s := newTrackedSession(state.NewInMemory())
	expiry, zero := uint32(3600), uint32(0)
	cp := &packets.Connect{Properties: &packets.Properties{SessionExpiryInterval: &expiry}}
	ca := &packets.Connack{Properties: &packets.Properties{SessionExpiryInterval: &zero}}
	if err := s.ConAckReceived(io.Discard, cp, ca); err != nil {
		t.Fatal(err)
	}
	addPublish(t, s)
	idle := s.idle()
	if isClosed(idle) {
		t.Fatal("idle with a message in flight")
	}
	if err := s.ConnectionLost(nil); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, idle, "idle after losing a connection whose session ends with it")
}
