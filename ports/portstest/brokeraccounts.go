package portstest

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// BrokerAccounts is an in-memory ports.BrokerAccounts that behaves as the
// broker's dynamic security plugin does for device accounts: an account
// authenticates (Authenticates) with its password while enabled;
// EnsureDeviceAccount makes or repairs one (clearing planted Problems) and
// keeps an existing account's creation time.
type BrokerAccounts struct {
	// Hook, when set, is called with the method name
	// ("EnsureDeviceAccount", "DisableDeviceAccount",
	// "EnableDeviceAccount", "DeleteDeviceAccount", "ListDeviceAccounts",
	// "Ping") and the client id ("" for ListDeviceAccounts and Ping) before
	// each operation that got past input validation; a non-nil result fails
	// the operation with that error and changes nothing (a
	// *model.UnavailableError with Service model.ServiceBroker plays a
	// broker that is down). Set it before use.
	Hook func(op, clientID string) error

	now func() time.Time

	mu       sync.Mutex
	accounts map[string]*fakeBrokerAccount
	calls    []BrokerCall
}

// BrokerCall is one recorded BrokerAccounts call.
type BrokerCall struct {
	Op       string
	ClientID string
}

type fakeBrokerAccount struct {
	password  string
	disabled  bool
	createdAt time.Time
	problems  []string
}

var _ ports.BrokerAccounts = (*BrokerAccounts)(nil)

// NewBrokerAccounts returns an empty BrokerAccounts that stamps creation
// times from clock (the wall clock when nil).
func NewBrokerAccounts(clock ports.Clock) *BrokerAccounts {
	return &BrokerAccounts{now: nowFunc(clock), accounts: map[string]*fakeBrokerAccount{}}
}

// Calls returns the calls made so far (validation failures are not calls).
func (b *BrokerAccounts) Calls() []BrokerCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

// Len returns how many accounts exist.
func (b *BrokerAccounts) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.accounts)
}

// Account returns the account as ListDeviceAccounts would, and whether it
// exists.
func (b *BrokerAccounts) Account(clientID string) (model.BrokerAccountInfo, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.accounts[clientID]
	if !ok {
		return model.BrokerAccountInfo{}, false
	}
	return info(clientID, a), true
}

// Authenticates reports whether a client logging in as clientID with
// password would be let in now: the account exists, is enabled and has
// that password.
func (b *BrokerAccounts) Authenticates(clientID, password string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.accounts[clientID]
	return ok && !a.disabled && a.password == password
}

// Put adds or replaces an account directly, as found on a broker —
// created at a.CreatedAt (zero: unknown), disabled and with Problems as
// a says — bypassing validation, Hook and the call log. Tests use it to
// plant orphans and accounts that need repair.
func (b *BrokerAccounts) Put(a model.BrokerAccountInfo, password string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.accounts[a.ClientID] = &fakeBrokerAccount{password: password, disabled: a.Disabled, createdAt: a.CreatedAt,
		problems: slices.Clone(a.Problems)}
}

func info(clientID string, a *fakeBrokerAccount) model.BrokerAccountInfo {
	return model.BrokerAccountInfo{ClientID: clientID, Disabled: a.disabled, CreatedAt: a.createdAt,
		Problems: slices.Clone(a.problems)}
}

func (b *BrokerAccounts) begin(op, clientID string) error {
	b.mu.Lock()
	b.calls = append(b.calls, BrokerCall{Op: op, ClientID: clientID})
	b.mu.Unlock()
	if b.Hook != nil {
		return b.Hook(op, clientID)
	}
	return nil
}

// EnsureDeviceAccount implements ports.BrokerAccounts.
func (b *BrokerAccounts) EnsureDeviceAccount(_ context.Context, acct model.BrokerAccount) error {
	if err := acct.Validate(); err != nil {
		return err
	}
	if err := b.begin("EnsureDeviceAccount", acct.ClientID); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	created := b.now()
	if old, ok := b.accounts[acct.ClientID]; ok && !old.createdAt.IsZero() {
		created = old.createdAt
	}
	b.accounts[acct.ClientID] = &fakeBrokerAccount{password: acct.Password, disabled: acct.Disabled, createdAt: created}
	return nil
}

// DisableDeviceAccount implements ports.BrokerAccounts.
func (b *BrokerAccounts) DisableDeviceAccount(_ context.Context, clientID string) error {
	return b.setDisabled("DisableDeviceAccount", clientID, true)
}

// EnableDeviceAccount implements ports.BrokerAccounts.
func (b *BrokerAccounts) EnableDeviceAccount(_ context.Context, clientID string) error {
	return b.setDisabled("EnableDeviceAccount", clientID, false)
}

func (b *BrokerAccounts) setDisabled(op, clientID string, disabled bool) error {
	if err := model.ValidateBrokerAccountName(clientID); err != nil {
		return err
	}
	if err := b.begin(op, clientID); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.accounts[clientID]
	if !ok {
		return fmt.Errorf("%s: %w", clientID, model.ErrBrokerAccountNotFound)
	}
	a.disabled = disabled
	return nil
}

// DeleteDeviceAccount implements ports.BrokerAccounts.
func (b *BrokerAccounts) DeleteDeviceAccount(_ context.Context, clientID string) error {
	if err := model.ValidateBrokerAccountName(clientID); err != nil {
		return err
	}
	if err := b.begin("DeleteDeviceAccount", clientID); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.accounts, clientID)
	return nil
}

// ListDeviceAccounts implements ports.BrokerAccounts, ordered by client id.
func (b *BrokerAccounts) ListDeviceAccounts(_ context.Context) ([]model.BrokerAccountInfo, error) {
	if err := b.begin("ListDeviceAccounts", ""); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []model.BrokerAccountInfo
	for id, a := range b.accounts {
		if strings.HasPrefix(id, model.ClientIDPrefix) {
			out = append(out, info(id, a))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ClientID < out[j].ClientID })
	return out, nil
}

// Ping implements ports.BrokerAccounts.
func (b *BrokerAccounts) Ping(_ context.Context) error { return b.begin("Ping", "") }
