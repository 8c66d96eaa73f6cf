package portstest

import (
	"context"
	"sync"

	"github.com/espmdm/espmdm/ports"
)

// Notification is one recorded Notifier call.
type Notification struct {
	Kind      string // "rotation", "config", "firmware" or "assigned"
	ClientID  string // rotation and config
	ModelCode string // firmware
	Version   string // firmware, assigned
	SHA256    string // assigned
}

// Notifier is a ports.Notifier that records every call.
type Notifier struct {
	// Err, when set, is returned by every call (which is still recorded).
	// Set it before use.
	Err error

	mu   sync.Mutex
	sent []Notification
}

var _ ports.Notifier = (*Notifier)(nil)

// NewNotifier returns a Notifier with nothing recorded.
func NewNotifier() *Notifier { return &Notifier{} }

// Sent returns every call made so far, in order.
func (n *Notifier) Sent() []Notification {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]Notification(nil), n.sent...)
}

func (n *Notifier) record(x Notification) error {
	n.mu.Lock()
	n.sent = append(n.sent, x)
	n.mu.Unlock()
	return n.Err
}

// RotationNudge implements ports.Notifier.
func (n *Notifier) RotationNudge(_ context.Context, clientID string) error {
	return n.record(Notification{Kind: "rotation", ClientID: clientID})
}

// ConfigChanged implements ports.Notifier.
func (n *Notifier) ConfigChanged(_ context.Context, clientID string) error {
	return n.record(Notification{Kind: "config", ClientID: clientID})
}

// FirmwareReleased implements ports.Notifier.
func (n *Notifier) FirmwareReleased(_ context.Context, modelCode, version string) error {
	return n.record(Notification{Kind: "firmware", ModelCode: modelCode, Version: version})
}

// FirmwareAssigned implements ports.Notifier (Kind "assigned").
func (n *Notifier) FirmwareAssigned(_ context.Context, clientID, version, sha256 string) error {
	return n.record(Notification{Kind: "assigned", ClientID: clientID, Version: version, SHA256: sha256})
}
