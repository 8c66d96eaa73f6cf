package mdm

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Device accounts on the MQTT broker (SPEC §19). With Deps.Broker set,
// every device has an account: username its client id, a random password
// made with the device and kept sealed in its row (like a rotation's old
// secret), handed out in its provisioning data. The account is made with
// the device (all or nothing with its client and row), disabled and enabled
// with it, removed with it; Reconcile makes missing accounts (a device made
// before accounts) and removes orphans. Without Deps.Broker (MQTT_AUTH=none)
// none of this happens and devices get no password.

// brokerPasswordBytes is the randomness of a device account's password:
// 24 bytes (192 bits, SPEC §19 asks for at least 128), 32 characters of
// unpadded base64url.
const brokerPasswordBytes = 24

// newBrokerPassword draws a device account password from s.d.Rand and
// seals it for the device row.
func (s *Service) newBrokerPassword() (plain string, sealed []byte, err error) {
	b := make([]byte, brokerPasswordBytes)
	if _, err := io.ReadFull(s.d.Rand, b); err != nil {
		return "", nil, fmt.Errorf("generate broker password: %w", err)
	}
	plain = base64.RawURLEncoding.EncodeToString(b)
	if sealed, err = s.d.SecretBox.Seal([]byte(plain)); err != nil {
		return "", nil, fmt.Errorf("seal broker password: %w", err)
	}
	return plain, sealed, nil
}

// brokerPassword opens d's sealed account password; "" when it has none.
func (s *Service) brokerPassword(d model.Device) (string, error) {
	if len(d.MQTTPassword) == 0 {
		return "", nil
	}
	plain, err := s.d.SecretBox.Open(d.MQTTPassword)
	if err != nil {
		return "", fmt.Errorf("device %d: open broker password: %w", d.ID, err)
	}
	return string(plain), nil
}

// makeAccount makes a new device's broker account (disabled unless
// active) with a new password, and returns the password sealed for the
// row; nil without Deps.Broker. A failure may leave a half-made account:
// it is removed.
func (s *Service) makeAccount(ctx context.Context, clientID string, active bool) ([]byte, error) {
	if s.d.Broker == nil {
		return nil, nil
	}
	plain, sealed, err := s.newBrokerPassword()
	if err != nil {
		return nil, err
	}
	if err := s.d.Broker.EnsureDeviceAccount(ctx, model.BrokerAccount{ClientID: clientID, Password: plain, Disabled: !active}); err != nil {
		s.deleteAccount(ctx, "create device: delete a half-made broker account", clientID)
		return nil, err
	}
	return sealed, nil
}

// setAccountActive disables or enables d's account before its row says so
// (a broker that cannot do it fails the change, nothing changed). A device
// without an account yet is left to the reconciler, which makes it with the
// row's active flag.
func (s *Service) setAccountActive(ctx context.Context, clientID string, active bool) error {
	if s.d.Broker == nil {
		return nil
	}
	var err error
	if active {
		err = s.d.Broker.EnableDeviceAccount(ctx, clientID)
	} else {
		err = s.d.Broker.DisableDeviceAccount(ctx, clientID)
	}
	if errors.Is(err, model.ErrBrokerAccountNotFound) {
		return nil
	}
	return err
}

// deleteAccount removes a deleted (or never stored) device's account; a
// failure goes to OnError and the reconciler removes the orphan later.
func (s *Service) deleteAccount(ctx context.Context, op, clientID string) {
	if s.d.Broker == nil {
		return
	}
	if err := s.d.Broker.DeleteDeviceAccount(context.WithoutCancel(ctx), clientID); err != nil {
		s.report(ctx, op, fmt.Errorf("account %s: %w", clientID, err))
	}
}

// reconcileAccounts compares the broker's device accounts with devices
// (listed before the accounts, as Reconcile lists them before the
// clients): it makes missing accounts, brings changed ones back to what
// EnsureDeviceAccount makes (their password and active flag the row's),
// and removes orphans older than Config.OrphanGrace (CreateDevice makes the
// account before the row). A device without a password gets one, stored in
// its row before the account is made: the device receives it at its next
// /iot/provisioning fetch (SPEC §19).
func (s *Service) reconcileAccounts(ctx context.Context, devices []model.Device, rep *ports.ReconcileReport) error {
	if s.d.Broker == nil {
		return nil
	}
	accounts, err := s.d.Broker.ListDeviceAccounts(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: list broker accounts: %w", err)
	}
	byName := make(map[string]model.BrokerAccountInfo, len(accounts))
	for _, a := range accounts {
		byName[a.ClientID] = a
	}
	expected := make(map[string]string, len(devices)) // key -> client id
	for _, d := range devices {
		expected[d.Key] = d.ClientID()
		a, found := byName[d.ClientID()]
		if found && len(a.Problems) == 0 && a.Disabled == !d.Active && len(d.MQTTPassword) > 0 {
			continue
		}
		made, err := s.ensureAccount(ctx, d)
		switch {
		case errors.Is(err, model.ErrNotFound):
			continue // deleted meanwhile
		case err != nil:
			rep.AccountsFailed = append(rep.AccountsFailed, d.ClientID())
			s.report(ctx, "reconcile: broker account", fmt.Errorf("device %d: %w", d.ID, err))
			continue
		}
		what := "made"
		if found {
			rep.AccountsRepaired = append(rep.AccountsRepaired, d.ClientID())
			what = "repaired"
		} else {
			rep.AccountsMade = append(rep.AccountsMade, d.ClientID())
		}
		if made {
			what += ", with a new password the device receives at its next provisioning fetch"
		}
		s.report(ctx, "reconcile: audit a broker account", s.appendAudit(ctx,
			s.deviceEntry(ctx, model.AuditBrokerAccountReconciled, d, what)))
	}

	// Orphans: accounts whose id does not parse, whose key's device has
	// another model, or whose key has no device now either (a device made
	// since the listing has its row), old enough.
	var orphans, candidates []model.BrokerAccountInfo
	for _, a := range accounts {
		code, key, ok := model.ParseClientID(a.ClientID)
		switch {
		case !ok:
			orphans = append(orphans, a)
		case expected[key] == model.ClientID(code, key):
			// Its device exists.
		case expected[key] != "":
			orphans = append(orphans, a)
		default:
			candidates = append(candidates, a)
		}
	}
	for start := 0; start < len(candidates); start += keysBatch {
		batch := candidates[start:min(start+keysBatch, len(candidates))]
		keys := make([]string, len(batch))
		for i, a := range batch {
			_, keys[i], _ = model.ParseClientID(a.ClientID)
		}
		exist, err := s.d.Devices.DeviceKeysExist(ctx, keys)
		if err != nil {
			return fmt.Errorf("reconcile: check device keys: %w", err)
		}
		for i, a := range batch {
			if !exist[keys[i]] {
				orphans = append(orphans, a)
			}
		}
	}
	sort.Slice(orphans, func(i, j int) bool { return orphans[i].ClientID < orphans[j].ClientID })
	now := s.now()
	for _, a := range orphans {
		if !a.CreatedAt.IsZero() && now.Sub(a.CreatedAt) < s.cfg.OrphanGrace {
			continue // its device row may still be on its way
		}
		if err := s.d.Broker.DeleteDeviceAccount(ctx, a.ClientID); err != nil {
			rep.AccountsFailed = append(rep.AccountsFailed, a.ClientID)
			s.report(ctx, "reconcile: delete orphaned broker account", fmt.Errorf("account %s: %w", a.ClientID, err))
			continue
		}
		rep.AccountsDeleted = append(rep.AccountsDeleted, a.ClientID)
		e := s.entry(ctx, model.AuditOrphanAccountDeleted, "a broker account without a device")
		e.ClientID = a.ClientID
		s.report(ctx, "reconcile: audit an orphan account's deletion", s.appendAudit(ctx, e))
	}
	return nil
}

// ensureAccount makes d's account as its row says (re-read under its
// lock): the row's password, or a new one stored in the row first; the
// row's active flag. made tells whether a new password was stored.
func (s *Service) ensureAccount(ctx context.Context, d model.Device) (made bool, err error) {
	var plain string
	cur, err := s.d.Devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
		if len(cur.MQTTPassword) > 0 {
			return nil, nil
		}
		p, sealed, err := s.newBrokerPassword()
		if err != nil {
			return nil, err
		}
		plain, made = p, true
		cur.MQTTPassword = sealed
		return nil, nil
	})
	if err != nil {
		return false, err
	}
	if !made {
		if plain, err = s.brokerPassword(cur); err != nil {
			return false, err
		}
	}
	return made, s.d.Broker.EnsureDeviceAccount(ctx, model.BrokerAccount{
		ClientID: cur.ClientID(), Password: plain, Disabled: !cur.Active,
	})
}
