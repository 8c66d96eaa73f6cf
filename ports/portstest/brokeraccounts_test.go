package portstest_test

import (
	"errors"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestBrokerAccountsContract(t *testing.T) {
	portstest.RunBrokerAccountsContract(t, func(t *testing.T) ports.BrokerAccounts {
		return portstest.NewBrokerAccounts(nil)
	})
}

func TestBrokerAccountsFake(t *testing.T) {
	clock := portstest.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	b := portstest.NewBrokerAccounts(clock)
	id, pw := model.ClientID("m1", "abcdefgh"), portstest.NewBrokerPassword()
	if err := b.EnsureDeviceAccount(t.Context(), model.BrokerAccount{ClientID: id, Password: pw}); err != nil {
		t.Fatal(err)
	}
	if !b.Authenticates(id, pw) || b.Authenticates(id, pw+"x") {
		t.Errorf("Authenticates: want the password and only it accepted")
	}
	if err := b.DisableDeviceAccount(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if b.Authenticates(id, pw) {
		t.Errorf("a disabled account authenticates")
	}
	if got, ok := b.Account(id); !ok || !got.CreatedAt.Equal(clock.Now()) || !got.Disabled {
		t.Errorf("Account = %+v, %t; want disabled, created at the clock's time", got, ok)
	}

	// A planted account with problems is repaired by EnsureDeviceAccount,
	// keeping its creation time.
	orphan := model.BrokerAccountInfo{ClientID: model.ClientID("m1", "zzzzzzzz"), Problems: []string{"its role is missing"},
		CreatedAt: clock.Now().Add(-time.Hour)}
	b.Put(orphan, "old")
	if err := b.EnsureDeviceAccount(t.Context(), model.BrokerAccount{ClientID: orphan.ClientID, Password: pw}); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Account(orphan.ClientID); len(got.Problems) != 0 || !got.CreatedAt.Equal(orphan.CreatedAt) {
		t.Errorf("repaired account = %+v, want no problems and the planted creation time", got)
	}

	// Hook fails calls and changes nothing.
	down := &model.UnavailableError{Service: model.ServiceBroker, Err: errors.New("down")}
	b.Hook = func(op, _ string) error {
		if op == "DeleteDeviceAccount" {
			return down
		}
		return nil
	}
	if err := b.DeleteDeviceAccount(t.Context(), id); !errors.Is(err, model.ErrUnavailable) {
		t.Errorf("DeleteDeviceAccount with the hook failing = %v, want ErrUnavailable", err)
	}
	if _, ok := b.Account(id); !ok || b.Len() != 2 {
		t.Errorf("a failed delete removed the account")
	}
	calls := b.Calls()
	if last := calls[len(calls)-1]; last != (portstest.BrokerCall{Op: "DeleteDeviceAccount", ClientID: id}) {
		t.Errorf("last call = %+v", last)
	}
}
