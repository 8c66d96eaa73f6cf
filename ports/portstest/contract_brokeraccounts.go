package portstest

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// RunBrokerAccountsContract runs the contract of ports.BrokerAccounts
// against the implementations newAccounts returns (once per subtest).
// Client ids are unique per subtest and the accounts a subtest makes are
// removed at its end, so the broker may hold other accounts.
func RunBrokerAccountsContract(t *testing.T, newAccounts func(t *testing.T) ports.BrokerAccounts) {
	t.Helper()

	t.Run("EnsureDeviceAccount makes an account that ListDeviceAccounts finds as made", func(t *testing.T) {
		a := newAccounts(t)
		before := time.Now()
		id := newBrokerAccount(t, a)
		mustNoErr(t, "EnsureDeviceAccount", a.EnsureDeviceAccount(t.Context(), model.BrokerAccount{ClientID: id, Password: NewBrokerPassword()}))
		after := time.Now()
		got := findAccount(t, a, id)
		if got.Disabled || len(got.Problems) != 0 {
			t.Errorf("listed as %+v, want enabled without problems", got)
		}
		// The creation time is the adapter's clock's (a minute of slack
		// for a broker on another machine).
		if got.CreatedAt.Before(before.Add(-time.Minute)) || got.CreatedAt.After(after.Add(time.Minute)) {
			t.Errorf("CreatedAt = %v, want between %v and %v", got.CreatedAt, before, after)
		}
	})

	t.Run("EnsureDeviceAccount is idempotent and sets what it is given", func(t *testing.T) {
		a := newAccounts(t)
		id := newBrokerAccount(t, a)
		acct := model.BrokerAccount{ClientID: id, Password: NewBrokerPassword()}
		mustNoErr(t, "EnsureDeviceAccount", a.EnsureDeviceAccount(t.Context(), acct))
		first := findAccount(t, a, id)
		acct.Password = NewBrokerPassword()
		mustNoErr(t, "EnsureDeviceAccount again (new password)", a.EnsureDeviceAccount(t.Context(), acct))
		acct.Disabled = true
		mustNoErr(t, "EnsureDeviceAccount disabled", a.EnsureDeviceAccount(t.Context(), acct))
		got := findAccount(t, a, id)
		if !got.Disabled || len(got.Problems) != 0 {
			t.Errorf("after EnsureDeviceAccount(Disabled) listed as %+v, want disabled without problems", got)
		}
		if !got.CreatedAt.Equal(first.CreatedAt) {
			t.Errorf("CreatedAt changed from %v to %v: an existing account keeps its creation time", first.CreatedAt, got.CreatedAt)
		}
		acct.Disabled = false
		mustNoErr(t, "EnsureDeviceAccount enabled", a.EnsureDeviceAccount(t.Context(), acct))
		if got := findAccount(t, a, id); got.Disabled {
			t.Errorf("after EnsureDeviceAccount(enabled) listed as disabled")
		}
		n := 0
		for _, info := range listAccounts(t, a) {
			if info.ClientID == id {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s listed %d times, want once", id, n)
		}
	})

	t.Run("DisableDeviceAccount and EnableDeviceAccount", func(t *testing.T) {
		a := newAccounts(t)
		id := newBrokerAccount(t, a)
		mustNoErr(t, "EnsureDeviceAccount", a.EnsureDeviceAccount(t.Context(), model.BrokerAccount{ClientID: id, Password: NewBrokerPassword()}))
		for _, step := range []struct {
			op       string
			call     func(context.Context, string) error
			disabled bool
		}{
			{"DisableDeviceAccount", a.DisableDeviceAccount, true},
			{"DisableDeviceAccount again", a.DisableDeviceAccount, true},
			{"EnableDeviceAccount", a.EnableDeviceAccount, false},
			{"EnableDeviceAccount again", a.EnableDeviceAccount, false},
		} {
			mustNoErr(t, step.op, step.call(t.Context(), id))
			if got := findAccount(t, a, id); got.Disabled != step.disabled || len(got.Problems) != 0 {
				t.Errorf("after %s listed as %+v, want Disabled %t without problems", step.op, got, step.disabled)
			}
		}
	})

	t.Run("a missing account is ErrBrokerAccountNotFound to disable or enable, and no error to delete", func(t *testing.T) {
		a := newAccounts(t)
		id := model.ClientID(UniqueCode("ct_brk"), randomKey())
		for name, call := range map[string]func(context.Context, string) error{
			"DisableDeviceAccount": a.DisableDeviceAccount, "EnableDeviceAccount": a.EnableDeviceAccount,
		} {
			err := call(t.Context(), id)
			wantErrIs(t, name, err, model.ErrBrokerAccountNotFound)
			wantErrIs(t, name, err, model.ErrNotFound)
		}
		mustNoErr(t, "DeleteDeviceAccount of a missing account", a.DeleteDeviceAccount(t.Context(), id))
	})

	t.Run("DeleteDeviceAccount removes the account", func(t *testing.T) {
		a := newAccounts(t)
		id := newBrokerAccount(t, a)
		mustNoErr(t, "EnsureDeviceAccount", a.EnsureDeviceAccount(t.Context(), model.BrokerAccount{ClientID: id, Password: NewBrokerPassword()}))
		mustNoErr(t, "DeleteDeviceAccount", a.DeleteDeviceAccount(t.Context(), id))
		for _, info := range listAccounts(t, a) {
			if info.ClientID == id {
				t.Fatalf("%s still listed after DeleteDeviceAccount", id)
			}
		}
		wantErrIs(t, "DisableDeviceAccount after delete", a.DisableDeviceAccount(t.Context(), id), model.ErrBrokerAccountNotFound)
		mustNoErr(t, "DeleteDeviceAccount again", a.DeleteDeviceAccount(t.Context(), id))
	})

	t.Run("ListDeviceAccounts lists device accounts only", func(t *testing.T) {
		a := newAccounts(t)
		id := newBrokerAccount(t, a)
		mustNoErr(t, "EnsureDeviceAccount", a.EnsureDeviceAccount(t.Context(), model.BrokerAccount{ClientID: id, Password: NewBrokerPassword()}))
		for _, info := range listAccounts(t, a) {
			if !strings.HasPrefix(info.ClientID, model.ClientIDPrefix) {
				t.Errorf("listed %q, which is not a device account", info.ClientID)
			}
		}
	})

	t.Run("bad input is a ValidationError and changes nothing", func(t *testing.T) {
		a := newAccounts(t)
		id := model.ClientID(UniqueCode("ct_brk"), randomKey())
		pw := NewBrokerPassword()
		for _, acct := range []model.BrokerAccount{
			{ClientID: "espmdm", Password: pw},
			{ClientID: "iotdevice-", Password: pw},
			{ClientID: id + "/#", Password: pw},
			{ClientID: "iotdevice-Model-abcdefgh", Password: pw},
			{ClientID: "iotdevice-m+x-abcdefgh", Password: pw},
			{ClientID: id, Password: ""},
			{ClientID: id, Password: "short"},
			{ClientID: id, Password: pw + "\x00"},
			{ClientID: id, Password: strings.Repeat("p", 1025)},
		} {
			var ve *model.ValidationError
			if err := a.EnsureDeviceAccount(t.Context(), acct); !errors.As(err, &ve) {
				t.Errorf("EnsureDeviceAccount(%q, %d-char password) = %v, want a *model.ValidationError", acct.ClientID, len(acct.Password), err)
			} else if pw != "" && strings.Contains(err.Error(), pw) {
				t.Errorf("the error repeats the password")
			}
		}
		for _, name := range []string{"", "espmdm", "iotdevice-", "iotdevice-a\x00b", "iotdevice-\xff"} {
			for op, call := range map[string]func(context.Context, string) error{
				"DisableDeviceAccount": a.DisableDeviceAccount, "EnableDeviceAccount": a.EnableDeviceAccount,
				"DeleteDeviceAccount": a.DeleteDeviceAccount,
			} {
				var ve *model.ValidationError
				if err := call(t.Context(), name); !errors.As(err, &ve) {
					t.Errorf("%s(%q) = %v, want a *model.ValidationError", op, name, err)
				}
			}
		}
		for _, info := range listAccounts(t, a) {
			if info.ClientID == id {
				t.Errorf("%s exists after refused calls", id)
			}
		}
	})

	t.Run("concurrent calls all take effect", func(t *testing.T) {
		a := newAccounts(t)
		ids := make([]string, 40)
		for i := range ids {
			ids[i] = newBrokerAccount(t, a)
		}
		var wg sync.WaitGroup
		errs := make([]error, len(ids))
		for i, id := range ids {
			wg.Go(func() {
				errs[i] = a.EnsureDeviceAccount(t.Context(), model.BrokerAccount{ClientID: id, Password: NewBrokerPassword(), Disabled: i%2 == 1})
			})
		}
		wg.Wait()
		for i, err := range errs {
			mustNoErr(t, "EnsureDeviceAccount "+ids[i], err)
		}
		listed := map[string]model.BrokerAccountInfo{}
		for _, info := range listAccounts(t, a) {
			listed[info.ClientID] = info
		}
		for i, id := range ids {
			got, ok := listed[id]
			switch {
			case !ok:
				t.Errorf("%s not listed", id)
			case got.Disabled != (i%2 == 1) || len(got.Problems) != 0:
				t.Errorf("%s listed as %+v, want Disabled %t without problems", id, got, i%2 == 1)
			}
		}
	})

	t.Run("Ping", func(t *testing.T) {
		mustNoErr(t, "Ping", newAccounts(t).Ping(t.Context()))
	})
}

// NewBrokerPassword returns a random device account password (26
// characters, 130 bits), as the core makes them.
func NewBrokerPassword() string { return rand.Text() }

// newBrokerAccount returns a unique device client id whose account is
// removed when the test ends.
func newBrokerAccount(t *testing.T, a ports.BrokerAccounts) string {
	t.Helper()
	id := model.ClientID(UniqueCode("ct_brk"), randomKey())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.DeleteDeviceAccount(ctx, id); err != nil {
			t.Errorf("clean up account %s: %v", id, err)
		}
	})
	return id
}

func listAccounts(t *testing.T, a ports.BrokerAccounts) []model.BrokerAccountInfo {
	t.Helper()
	list, err := a.ListDeviceAccounts(t.Context())
	mustNoErr(t, "ListDeviceAccounts", err)
	return list
}

func findAccount(t *testing.T, a ports.BrokerAccounts, id string) model.BrokerAccountInfo {
	t.Helper()
	for _, info := range listAccounts(t, a) {
		if info.ClientID == id {
			return info
		}
	}
	t.Fatalf("%s not listed", id)
	return model.BrokerAccountInfo{}
}
