package portstest

import (
	"context"
	"sync"

	"github.com/espmdm/espmdm/ports"
)

// Leases is an in-memory stand-in for the database that the rotation
// worker's leases share: For returns the ports.Lease of one process, and at
// most one of them holds the lease at a time. Kill and Restart simulate a
// holder's death and a database restart.
//
// It follows the PostgreSQL lease: a process whose hold ended without a
// Release (Kill, Restart) reports not held on its next Hold, once, and
// tries to take the lease again on the Hold after that.
type Leases struct {
	// Hook, when set, is called with the method name ("Hold", "Release",
	// "Holder") and the process name before each operation of any of the
	// leases; a non-nil result fails the operation with that error and
	// changes nothing. Set it before use.
	Hook func(op, holder string) error

	mu     sync.Mutex
	holder *Lease // nil when free
}

// NewLeases returns a Leases whose lease nobody holds.
func NewLeases() *Leases { return &Leases{} }

// Lease is one process's lease of a Leases.
type Lease struct {
	leases *Leases
	name   string
	// lost: this process held the lease and its hold ended without a
	// Release; guarded by leases.mu.
	lost bool
}

var _ ports.Lease = (*Lease)(nil)

// For returns the lease of a new process named holder. Every call returns
// a new process, also for a name used before (two processes may share a
// name; only one holds the lease).
func (ls *Leases) For(holder string) *Lease { return &Lease{leases: ls, name: holder} }

// Kill ends the processes named holder as a crash would: if one of them
// holds the lease, the lease is free at once (its next Hold reports false).
func (ls *Leases) Kill(holder string) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.holder != nil && ls.holder.name == holder {
		ls.holder.lost = true
		ls.holder = nil
	}
}

// Restart simulates a database restart: whoever holds the lease loses it.
func (ls *Leases) Restart() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.holder != nil {
		ls.holder.lost = true
		ls.holder = nil
	}
}

// HolderName returns the name of the process holding the lease, "" when
// none (Holder without a context, for tests).
func (ls *Leases) HolderName() string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.holder == nil {
		return ""
	}
	return ls.holder.name
}

func (l *Lease) hook(op string) error {
	if l.leases.Hook == nil {
		return nil
	}
	return l.leases.Hook(op, l.name)
}

// Hold implements ports.Lease.
func (l *Lease) Hold(_ context.Context) (bool, error) {
	if err := l.hook("Hold"); err != nil {
		return false, err
	}
	ls := l.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	switch {
	case l.lost:
		l.lost = false
		return false, nil
	case ls.holder == l:
		return true, nil
	case ls.holder == nil:
		ls.holder = l
		return true, nil
	}
	return false, nil
}

// Release implements ports.Lease.
func (l *Lease) Release(_ context.Context) error {
	if err := l.hook("Release"); err != nil {
		return err
	}
	ls := l.leases
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l.lost = false
	if ls.holder == l {
		ls.holder = nil
	}
	return nil
}

// Holder implements ports.Lease.
func (l *Lease) Holder(_ context.Context) (string, error) {
	if err := l.hook("Holder"); err != nil {
		return "", err
	}
	return l.leases.HolderName(), nil
}
