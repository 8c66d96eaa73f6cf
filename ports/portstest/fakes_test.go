package portstest_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestClock(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	c := portstest.NewClock(t0)
	if !c.Now().Equal(t0) {
		t.Errorf("Now() = %v, want %v", c.Now(), t0)
	}
	if got := c.Advance(time.Minute); !got.Equal(t0.Add(time.Minute)) || !c.Now().Equal(got) {
		t.Errorf("Advance: got %v, Now %v", got, c.Now())
	}
	c.Set(t0)
	if !c.Now().Equal(t0) {
		t.Errorf("after Set: %v", c.Now())
	}
}

func TestNotifierRecords(t *testing.T) {
	n := portstest.NewNotifier()
	ctx := t.Context()
	_ = n.RotationNudge(ctx, "iotdevice-a-12345678")
	_ = n.ConfigChanged(ctx, "iotdevice-a-12345678")
	_ = n.FirmwareReleased(ctx, "a", "1.0")
	want := []portstest.Notification{
		{Kind: "rotation", ClientID: "iotdevice-a-12345678"},
		{Kind: "config", ClientID: "iotdevice-a-12345678"},
		{Kind: "firmware", ModelCode: "a", Version: "1.0"},
	}
	if got := n.Sent(); !slices.Equal(got, want) {
		t.Errorf("Sent() = %v, want %v", got, want)
	}
	n.Err = errors.New("down")
	if err := n.ConfigChanged(ctx, "x"); !errors.Is(err, n.Err) || len(n.Sent()) != 4 {
		t.Errorf("with Err set: %v, %d recorded", err, len(n.Sent()))
	}
}

func TestHooksFailWithoutChanging(t *testing.T) {
	s := portstest.NewStore(nil)
	boom := errors.New("boom")
	s.Hook = func(op string) error {
		if op == "CreateModel" {
			return boom
		}
		return nil
	}
	m := model.DeviceModel{Code: "a", Name: "A"}
	if err := s.CreateModel(t.Context(), &m, nil); !errors.Is(err, boom) {
		t.Errorf("CreateModel: %v", err)
	}
	if ms, _ := s.ListModels(t.Context()); len(ms) != 0 {
		t.Errorf("stored %v", ms)
	}

	p := portstest.NewIdentityProvider(nil)
	p.Hook = func(op, id string) error { return boom }
	if _, err := p.CreateClient(t.Context(), "iotdevice-a-12345678"); !errors.Is(err, boom) || p.Has("iotdevice-a-12345678") {
		t.Errorf("CreateClient: %v", err)
	}
	if calls := p.Calls(); len(calls) != 1 || calls[0].Op != "CreateClient" {
		t.Errorf("Calls() = %v", calls)
	}
}

func TestTokenVerifier(t *testing.T) {
	v := portstest.NewTokenVerifier()
	c := model.DeviceClaims{ClientID: "iotdevice-a-12345678", ModelCode: "a", Key: "12345678"}
	v.AddDevice("dev", c)
	v.AddAdmin("adm", model.Principal{Subject: "alice", Roles: []string{"mdm-admin"}})
	if got, err := v.VerifyDevice(t.Context(), "dev"); err != nil || got != c {
		t.Errorf("VerifyDevice: %+v, %v", got, err)
	}
	if _, err := v.VerifyDevice(t.Context(), "adm"); !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyDevice(admin token): %v", err)
	}
	if p, err := v.VerifyAdmin(t.Context(), "adm"); err != nil || !p.HasRole("mdm-admin") {
		t.Errorf("VerifyAdmin: %+v, %v", p, err)
	}
	if _, err := v.VerifyAdmin(t.Context(), "dev"); !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyAdmin(device token): %v", err)
	}
}
