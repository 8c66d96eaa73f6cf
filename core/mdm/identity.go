package mdm

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// keysBatch is how many keys one DeviceKeysExist call checks.
const keysBatch = 500

// IdentityStatus reports the state of the device's client in the identity
// provider.
func (s *Service) IdentityStatus(ctx context.Context, id int64) (model.IdentityStatus, error) {
	d, err := s.d.Devices.GetDevice(ctx, id)
	if err != nil {
		return model.IdentityStatus{}, fmt.Errorf("identity of device %d: %w", id, err)
	}
	st, err := s.d.Clients.ClientStatus(ctx, d.ClientID())
	if err != nil {
		return model.IdentityStatus{}, fmt.Errorf("identity of device %d: %w", id, err)
	}
	return st, nil
}

// SyncIdentity repairs the device's client (creating it when missing,
// keeping an existing secret) and reports its state afterwards.
func (s *Service) SyncIdentity(ctx context.Context, id int64) (model.IdentityStatus, error) {
	d, err := s.d.Devices.GetDevice(ctx, id)
	if err != nil {
		return model.IdentityStatus{}, fmt.Errorf("sync identity of device %d: %w", id, err)
	}
	e := s.deviceEntry(ctx, model.AuditIdentityRepaired, d, "")
	st, err := s.d.Clients.RepairClient(ctx, d.ClientID())
	if err != nil {
		s.auditFailure(ctx, e, err)
		return model.IdentityStatus{}, fmt.Errorf("sync identity of device %d: %w", id, err)
	}
	if d.ClientCovered && s.RotationMode() != model.RotationGrace {
		// A client made again by the repair is covered by the rotation
		// policy only where one is in force: the next grace-mode
		// generation (or the reconciler) checks.
		if _, err := s.d.Devices.UpdateDevice(ctx, id, func(row *model.Device) ([]model.AuditEntry, error) {
			row.ClientCovered = false
			return nil, nil
		}); err != nil && !errors.Is(err, model.ErrNotFound) {
			return model.IdentityStatus{}, fmt.Errorf("sync identity of device %d: %w", id, err)
		}
	}
	e.Detail = fmt.Sprintf("client exists %t, enabled %t, %d problem(s) left", st.Exists, st.Enabled, len(st.Problems))
	s.report(ctx, "sync identity: audit", s.appendAudit(ctx, e))
	return st, nil
}

// Reconcile compares the identity provider's device clients with the
// device rows. It deletes orphans (clients whose id does not parse, whose
// key has no device, or whose key belongs to a device of another model)
// and reports devices whose client is missing. It does not recreate
// missing clients: a new client has a new secret the device does not know;
// SyncIdentity and re-provisioning do that on purpose.
//
// The race it avoids: CreateDevice creates the client before it inserts
// the row, so for a moment a healthy new client looks like an orphan. Keys
// are checked against the database after the clients are listed, and an
// orphan is deleted only when it is older than Config.OrphanGrace (a
// client whose creation time is unknown counts as old). A row committed in
// the meantime is seen; a row still on its way is protected by the grace
// period. Symmetrically, devices are listed before the clients, so every
// listed device's client (created before its row) is in the client list
// unless it is really gone; a device deleted during the run is re-checked
// before it is reported missing.
//
// Failed deletions are listed in the report (and sent to OnError); the next
// run retries them. Failing to list clients or devices is an error.
func (s *Service) Reconcile(ctx context.Context) (ports.ReconcileReport, error) {
	var rep ports.ReconcileReport

	// 1. Devices first: the client id every device should have.
	expected := map[string]string{} // key -> client id
	type listed struct {
		id       int64
		clientID string
	}
	var devices []listed
	var rows []model.Device     // for the broker accounts
	var rotation []model.Device // for the rotation policy's cover (grace mode)
	for after := int64(0); ; {
		p, err := s.d.Devices.ListDevices(ctx, ports.DeviceFilter{Limit: ports.MaxPageSize, AfterID: after})
		if err != nil {
			return rep, fmt.Errorf("reconcile: list devices: %w", err)
		}
		for _, d := range p.Devices {
			expected[d.Key] = d.ClientID()
			devices = append(devices, listed{d.ID, d.ClientID()})
			rotation = append(rotation, d)
			if s.d.Broker != nil {
				rows = append(rows, d)
			}
		}
		if p.NextAfterID == 0 {
			break
		}
		after = p.NextAfterID
	}

	// 2. Then the clients.
	clients, err := s.d.Directory.ListDeviceClients(ctx)
	if err != nil {
		return rep, fmt.Errorf("reconcile: list clients: %w", err)
	}
	now := s.now()
	present := make(map[string]bool, len(clients))
	info := make(map[string]model.ClientInfo, len(clients))
	var candidates []model.ClientInfo // parse, key lookup pending
	var orphans []model.ClientInfo
	for _, c := range clients {
		present[c.ClientID] = true
		info[c.ClientID] = c
		code, key, ok := model.ParseClientID(c.ClientID)
		switch {
		case !ok:
			orphans = append(orphans, c)
		case expected[key] != "" && expected[key] != model.ClientID(code, key):
			orphans = append(orphans, c) // the key's device has another model
		case expected[key] != "":
			// Its device exists.
		default:
			candidates = append(candidates, c)
		}
	}

	// 3. Ask the database about keys not seen in step 1 (their device may
	// have been created since).
	for start := 0; start < len(candidates); start += keysBatch {
		batch := candidates[start:min(start+keysBatch, len(candidates))]
		keys := make([]string, len(batch))
		for i, c := range batch {
			_, keys[i], _ = model.ParseClientID(c.ClientID)
		}
		exist, err := s.d.Devices.DeviceKeysExist(ctx, keys)
		if err != nil {
			return rep, fmt.Errorf("reconcile: check device keys: %w", err)
		}
		for i, c := range batch {
			if !exist[keys[i]] {
				orphans = append(orphans, c)
			}
		}
	}

	// 4. Delete the orphans that are old enough.
	sort.Slice(orphans, func(i, j int) bool { return orphans[i].ClientID < orphans[j].ClientID })
	for _, c := range orphans {
		if !c.CreatedAt.IsZero() && now.Sub(c.CreatedAt) < s.cfg.OrphanGrace {
			continue // its device row may still be on its way
		}
		if err := s.d.Directory.DeleteClient(ctx, c.ClientID); err != nil {
			rep.Failed = append(rep.Failed, c.ClientID)
			s.report(ctx, "reconcile: delete orphaned client", fmt.Errorf("client %s: %w", c.ClientID, err))
			continue
		}
		rep.DeletedOrphans = append(rep.DeletedOrphans, c.ClientID)
		e := s.entry(ctx, model.AuditOrphanClientDeleted, "a device client without a device")
		e.ClientID = c.ClientID
		s.report(ctx, "reconcile: audit an orphan's deletion", s.appendAudit(ctx, e))
	}

	// 5. Devices without a client, unless deleted meanwhile.
	for _, d := range devices {
		if present[d.clientID] {
			continue
		}
		if _, err := s.d.Devices.GetDevice(ctx, d.id); errors.Is(err, model.ErrNotFound) {
			continue
		} else if err != nil {
			return rep, fmt.Errorf("reconcile: re-check device %d: %w", d.id, err)
		}
		rep.MissingClients = append(rep.MissingClients, d.clientID)
	}

	// 6. The devices' broker accounts.
	if err := s.reconcileAccounts(ctx, rows, &rep); err != nil {
		return rep, err
	}

	// 7. In grace mode, what a generation without a read of the client
	// relies on (rotation_fetch.go).
	if s.RotationMode() == model.RotationGrace {
		s.reconcileCover(ctx, rotation, info, &rep)
	}
	return rep, nil
}

// reconcileCover keeps the devices' ClientCovered true only where a
// grace-mode generation may skip reading the client: the rotation policy
// covers the client (applied here where it does not yet), and no secret
// was generated outside espmdm (an administrator's "Regenerate" in
// Keycloak leaves a rotated secret while no rotation of espmdm's has one:
// the next generation reads the client and takes that secret instead of
// ending the old one, which the device may still hold). devices were
// listed before the clients; each change is made on the locked row.
func (s *Service) reconcileCover(ctx context.Context, devices []model.Device, info map[string]model.ClientInfo, rep *ports.ReconcileReport) {
	for _, d := range devices {
		ci, ok := info[d.ClientID()]
		foreign := ok && ci.Rotated && !d.Generated() && d.GenerationIntentAt == nil
		switch {
		case !ok: // reported missing
		case !d.ClientCovered && foreign: // its next generation reads the client anyway
		case !d.ClientCovered:
			if err := s.coverDevice(ctx, d.ID, ci.Covered); err != nil {
				rep.CoverFailed = append(rep.CoverFailed, ci.ClientID)
				s.report(ctx, "reconcile: cover a client", fmt.Errorf("device %d: %w", d.ID, err))
				continue
			}
			rep.Covered = append(rep.Covered, ci.ClientID)
		case foreign:
			_, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
				if !row.Generated() && row.GenerationIntentAt == nil {
					row.ClientCovered = false // the next generation reads the client
				}
				return nil, nil
			})
			if err != nil && !errors.Is(err, model.ErrNotFound) {
				s.report(ctx, "reconcile: a secret generated outside espmdm", fmt.Errorf("device %d: %w", d.ID, err))
				continue
			}
			rep.Regenerated = append(rep.Regenerated, ci.ClientID)
		}
	}
}

// coverDevice makes sure the rotation policy covers device id's client
// (ports.SecretRotator.CoverClient, unless covered says it was seen
// covered) and records that it does, with the row
// locked: a grace-mode generation then needs no check of its own
// (rotation_fetch.go). A device deleted meanwhile is not an error.
func (s *Service) coverDevice(ctx context.Context, id int64, covered bool) error {
	_, err := s.d.Devices.UpdateDevice(ctx, id, func(row *model.Device) ([]model.AuditEntry, error) {
		if row.ClientCovered {
			return nil, nil
		}
		if covered {
			row.MarkCovered() // seen in the client list
			return nil, nil
		}
		if _, err := s.d.Rotator.CoverClient(ctx, row.ClientID()); err != nil {
			if errors.Is(err, model.ErrNotFound) { // the client's, not the row's (F2)
				return nil, fmt.Errorf("client %s is missing: %w", row.ClientID(), model.ErrUnavailable)
			}
			return nil, err
		}
		row.MarkCovered()
		return nil, nil
	})
	if errors.Is(err, model.ErrNotFound) {
		return nil
	}
	return err
}
