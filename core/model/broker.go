package model

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// ServiceBroker is the Service of an *UnavailableError from the MQTT broker
// (notifications and device accounts alike): a dependency, like the
// identity provider, so the HTTP API answers 502.
const ServiceBroker = "mqtt"

// ErrBrokerAccountNotFound means the broker holds no account for the
// device. It matches ErrNotFound too, and stays distinguishable from a
// repository's "not found": a device provisioned before broker accounts
// existed has a row and no account.
var ErrBrokerAccountNotFound = fmt.Errorf("broker account %w", ErrNotFound)

// BrokerAccountMinPassword is the shortest device account password a
// broker-accounts port accepts (SPEC §19 asks for at least 128 random bits;
// 22 characters of a 64-letter alphabet hold 132).
const BrokerAccountMinPassword = 22

// BrokerAccount is a device's account on the MQTT broker (SPEC §19): it
// logs in with username ClientID and Password, and may subscribe to
// iotsupport/<client_id>/# and iotsupport/<model_code>/firmware (the model
// code is the ClientID's) and publish nothing.
type BrokerAccount struct {
	ClientID string
	Password string
	// Disabled accounts cannot connect (a deactivated device's).
	Disabled bool
}

// Validate returns a *ValidationError when the account cannot be a device
// account: a ClientID that is not a device client id (see ParseClientID),
// or a password that is too short or too long or holds a NUL. The reason
// never repeats the password.
func (a BrokerAccount) Validate() error {
	if _, _, ok := ParseClientID(a.ClientID); !ok {
		return Invalid("client_id", "%q is not a device client id (iotdevice-<model code>-<key>)", a.ClientID)
	}
	if len(a.Password) < BrokerAccountMinPassword {
		return Invalid("password", "must be at least %d characters", BrokerAccountMinPassword)
	}
	if len(a.Password) > 1024 {
		return Invalid("password", "must be at most 1024 characters")
	}
	for i := 0; i < len(a.Password); i++ {
		if a.Password[i] == 0 {
			return Invalid("password", "must not contain NUL")
		}
	}
	return nil
}

// ValidateBrokerAccountName returns a *ValidationError unless name can
// address a device account to disable, enable or remove: it starts with
// ClientIDPrefix and is valid UTF-8 without control characters, at most
// 1024 bytes. That is wider than ParseClientID, so that an account a
// listing found (one made by hand, say) can be removed.
func ValidateBrokerAccountName(name string) error {
	switch {
	case !strings.HasPrefix(name, ClientIDPrefix) || len(name) == len(ClientIDPrefix):
		return Invalid("client_id", "%q is not a device account (want %s...)", name, ClientIDPrefix)
	case len(name) > 1024:
		return Invalid("client_id", "is %d bytes long, at most 1024", len(name))
	case !utf8.ValidString(name) || strings.IndexFunc(name, unicode.IsControl) >= 0:
		return Invalid("client_id", "%q must be valid UTF-8 without control characters", name)
	}
	return nil
}

// BrokerAccountInfo is one device account found on the broker.
type BrokerAccountInfo struct {
	ClientID string
	Disabled bool
	// CreatedAt is when espmdm made the account (recorded with it); zero
	// when unknown. The reconciler leaves orphans younger than a grace
	// period alone: their device row may still be on its way.
	CreatedAt time.Time
	// Problems lists every way the account differs from what
	// EnsureDeviceAccount makes (a missing or changed role, extra roles or
	// groups), for the reconciler to repair. Empty when as made. Whether
	// its password is the device's cannot be read from the broker.
	Problems []string
}
