package mdm

import (
	"context"
	"fmt"
	"sync"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The queue and its slots (SPEC §4 "Slots"): devices are queued one by one
// or all at once, and started, at most RotationConcurrency PENDING at a
// time, as soon as a slot is free.

// RotateDevice implements ports.Rotation: it queues the device (an OK,
// QUEUED or TIMEOUT one) and starts free slots. A PENDING device is left as
// it is; an inactive one is model.ErrConflict.
func (s *Service) RotateDevice(ctx context.Context, id int64) (ports.RotateResult, error) {
	if _, err := s.rotationMode(); err != nil {
		return "", err
	}
	res := ports.RotateQueued
	_, err := s.d.Devices.UpdateDevice(ctx, id, func(d *model.Device) ([]model.AuditEntry, error) {
		e := s.deviceEntry(ctx, model.AuditRotationQueued, *d, "from "+string(d.RotationState))
		queued, err := d.QueueRotation()
		if err != nil || !queued {
			res = ports.RotateAlreadyPending
			return nil, err
		}
		res = ports.RotateQueued
		return s.audited(e), nil
	})
	if err != nil {
		return "", fmt.Errorf("rotate device %d: %w", id, err)
	}
	s.fillSlots(ctx)
	return res, nil
}

// TriggerRotation implements ports.Rotation: the whole fleet, or one
// model's devices (modelID not 0) — e.g. after that model's firmware leaked
// its credentials.
func (s *Service) TriggerRotation(ctx context.Context, modelID int64) (int, error) {
	if _, err := s.rotationMode(); err != nil {
		return 0, err
	}
	scope := ""
	if modelID != 0 {
		m, err := s.d.Models.GetModel(ctx, modelID)
		if err != nil {
			return 0, fmt.Errorf("trigger rotation: get device model %d: %w", modelID, err)
		}
		scope = " of device model " + m.Code
	}
	n, err := s.d.Devices.QueueRotations(ctx, modelID)
	if err != nil {
		return 0, fmt.Errorf("trigger rotation: %w", err)
	}
	e := s.entry(ctx, model.AuditRotationTriggered, fmt.Sprintf("%d device(s)%s queued", n, scope))
	e.ModelID = modelID
	s.report(ctx, "trigger rotation: audit", s.appendAudit(ctx, e))
	s.fillSlots(ctx)
	return n, nil
}

// slotFill coalesces the starts of free slots within a process: every
// completion frees a slot and asks for a start, and each start takes the
// database's rotation-slot lock (ports.RotationQueue.StartRotations),
// holding a pooled connection while it waits. Fifty completions at once
// would hold fifty connections, starving the device API. Instead one
// caller runs the start while the others only note that one is due again;
// the running caller repeats it until none is.
type slotFill struct {
	mu      sync.Mutex
	running bool
	again   bool
}

// fillSlots starts devices in free slots; a failure goes to OnError (the
// next cycle tries again). While another caller of this process is
// starting devices, it leaves the start to that caller, which runs it
// once more after its own, and returns at once.
func (s *Service) fillSlots(ctx context.Context) {
	f := &s.fill
	f.mu.Lock()
	if f.running {
		f.again = true
		f.mu.Unlock()
		return
	}
	f.running = true
	f.mu.Unlock()
	for {
		_, err := s.startRotations(ctx)
		s.report(ctx, "rotation: start devices in free slots", err)
		f.mu.Lock()
		if !f.again || ctx.Err() != nil {
			f.running, f.again = false, false
			f.mu.Unlock()
			return
		}
		f.again = false
		f.mu.Unlock()
	}
}

// startRotations starts devices in free slots and nudges them.
func (s *Service) startRotations(ctx context.Context) (int, error) {
	now := s.now()
	started, err := s.d.Devices.StartRotations(ctx, s.cfg.RotationConcurrency, now.Add(-s.cfg.RotationRetry), func(d *model.Device) ([]model.AuditEntry, error) {
		e := s.deviceEntry(ctx, model.AuditRotationStarted, *d, "from "+string(d.RotationState))
		if err := d.StartAttempt(now); err != nil {
			return nil, err
		}
		return s.audited(e), nil
	})
	if err != nil {
		return 0, fmt.Errorf("start rotations: %w", err)
	}
	for _, d := range started {
		s.event(ctx, RotationEvent{Kind: EventStarted, DeviceID: d.ID, ClientID: d.ClientID(), At: now})
		if err := s.d.Notifier.RotationNudge(ctx, d.ClientID()); err != nil {
			s.report(ctx, "rotation: nudge", fmt.Errorf("device %d: %w", d.ID, err))
		}
	}
	return len(started), nil
}

// leaveRotation takes a device that was just deactivated out of the queue:
// QUEUED goes back to OK, PENDING is timed out as the mode says (a failure
// is left to the next cycle's timeouts, which also take inactive PENDING
// devices).
func (s *Service) leaveRotation(ctx context.Context, before model.Device) {
	switch before.RotationState {
	case model.RotationQueued:
		_, err := s.d.Devices.UpdateDevice(ctx, before.ID, func(d *model.Device) ([]model.AuditEntry, error) {
			d.Dequeue()
			return nil, nil
		})
		s.report(ctx, "rotation: dequeue deactivated device", err)
	case model.RotationPending:
		_, err := s.timeOut(ctx, before.ID, s.now(), s.now())
		s.report(ctx, "rotation: time out deactivated device", err)
		s.fillSlots(ctx)
	}
}
