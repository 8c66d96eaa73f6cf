package ports

import (
	"context"

	"github.com/espmdm/espmdm/core/model"
)

// BrokerAccounts manages the devices' accounts on the MQTT broker (SPEC
// §19). Its consumers are the device use cases — an account is made with
// the device, all or nothing with its identity-provider client and row,
// disabled and enabled with it, removed with it — and the reconciler, which
// compares the accounts with the devices.
//
// An account's username is the device's client id. Device accounts are those
// whose username starts with model.ClientIDPrefix (the methods that take a
// client id check it with model.ValidateBrokerAccountName); the broker's
// other accounts (espmdm's own among them) are never listed, changed or
// removed.
//
// Implementations are safe for concurrent use (and may send concurrent
// calls to the broker together). Errors: bad input is a
// *model.ValidationError; a broker that cannot be reached, does not answer
// in time or refuses a change is a *model.UnavailableError with Service
// model.ServiceBroker; a missing account, where it matters, is
// model.ErrBrokerAccountNotFound. A call that fails may have been carried
// out in part: every method can be called again with the same arguments.
type BrokerAccounts interface {
	// EnsureDeviceAccount makes the account exist exactly as SPEC §19
	// describes it: acct.ClientID's username with acct.Password, a role of
	// its own that may subscribe to iotsupport/<client_id>/# and
	// iotsupport/<model_code>/firmware and publish nothing, in no group,
	// disabled when acct.Disabled. It is idempotent, not a conflict: an
	// existing account (a retried call, a half-made or hand-changed
	// account) is brought back to that, its password set again — which
	// disconnects a client connected with the account.
	EnsureDeviceAccount(ctx context.Context, acct model.BrokerAccount) error
	// DisableDeviceAccount makes the account unable to connect and
	// disconnects its clients; a missing account is
	// model.ErrBrokerAccountNotFound; disabling a disabled one is no error.
	DisableDeviceAccount(ctx context.Context, clientID string) error
	// EnableDeviceAccount lets the account connect again; a missing account
	// is model.ErrBrokerAccountNotFound; enabling an enabled one is no
	// error.
	EnableDeviceAccount(ctx context.Context, clientID string) error
	// DeleteDeviceAccount removes the account and its role, disconnecting
	// its clients; a missing account is not an error.
	DeleteDeviceAccount(ctx context.Context, clientID string) error
	// ListDeviceAccounts returns every device account on the broker (those
	// whose username starts with model.ClientIDPrefix), in no particular
	// order, each with what differs from what EnsureDeviceAccount makes.
	ListDeviceAccounts(ctx context.Context) ([]model.BrokerAccountInfo, error)
	// Ping checks that the broker answers and lets espmdm manage accounts,
	// for readiness.
	Ping(ctx context.Context) error
}
