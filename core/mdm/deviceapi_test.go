package mdm_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
)

func TestAuthenticateDevice(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "lamp", "")
	e.model(t, "other", "")
	d := e.device(t, m, `{"led":true}`)
	off, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: []byte(`{}`), Active: ptr(false)})
	if err != nil {
		t.Fatal(err)
	}
	claims := func(code, key string) model.DeviceClaims {
		return model.DeviceClaims{ClientID: model.ClientID(code, key), ModelCode: code, Key: key, IssuedAt: t0, ExpiresAt: t0.Add(5 * time.Minute)}
	}
	for _, tc := range []struct {
		name   string
		claims model.DeviceClaims
		want   error
	}{
		{"active device", claims("lamp", d.Key), nil},
		{"unknown key", claims("lamp", "zzzzzzzz"), model.ErrUnauthenticated},
		{"model mismatch", claims("other", d.Key), model.ErrUnauthenticated},
		{"inactive", claims("lamp", off.Key), model.ErrForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.svc.AuthenticateDevice(t.Context(), tc.claims)
			if tc.want != nil {
				wantIs(t, err, tc.want)
				return
			}
			if err != nil || got.ID != d.ID {
				t.Fatalf("got %+v, %v", got, err)
			}
		})
	}
}

func TestAuthenticateDeviceLastSeen(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "lamp", "")
	d := e.device(t, m, `{}`)
	c := model.DeviceClaims{ModelCode: "lamp", Key: d.Key}
	lastSeen := func() *time.Time {
		t.Helper()
		got, err := e.svc.GetDevice(t.Context(), d.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.LastSeenAt
	}
	writes := 0
	e.store.Hook = func(op string) error {
		if op == "TouchLastSeen" {
			writes++
		}
		return nil
	}
	for i, step := range []struct {
		advance   time.Duration
		want      time.Time
		wantWrite int
	}{
		{0, t0, 1},
		{30 * time.Second, t0, 1}, // within the minute: not even an UPDATE
		{29 * time.Second, t0, 1},
		{16 * time.Second, t0.Add(75 * time.Second), 2},
	} {
		e.clock.Advance(step.advance)
		if _, err := e.svc.AuthenticateDevice(t.Context(), c); err != nil {
			t.Fatal(err)
		}
		if got := lastSeen(); got == nil || !got.Equal(step.want) {
			t.Errorf("step %d: LastSeenAt %v, want %v", i, got, step.want)
		}
		if writes != step.wantWrite {
			t.Errorf("step %d: %d TouchLastSeen calls, want %d", i, writes, step.wantWrite)
		}
	}

	// A failed write does not fail authentication.
	e.clock.Advance(mdm.LastSeenInterval)
	down := &model.UnavailableError{Service: "postgres", Err: errors.New("read-only")}
	e.store.Hook = func(op string) error {
		if op == "TouchLastSeen" {
			return down
		}
		return nil
	}
	if _, err := e.svc.AuthenticateDevice(t.Context(), c); err != nil {
		t.Errorf("auth failed with last_seen_at unwritable: %v", err)
	}
	if r := e.reported(); len(r) != 1 || !errors.Is(r[0].err, model.ErrUnavailable) {
		t.Errorf("OnError got %v", r)
	}

	// A failed lookup is not an authentication failure: it is returned as is.
	e.store.Hook = func(op string) error {
		if op == "GetDeviceByKey" {
			return down
		}
		return nil
	}
	_, err := e.svc.AuthenticateDevice(t.Context(), c)
	if !errors.Is(err, model.ErrUnavailable) || errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("got %v, want ErrUnavailable", err)
	}
}

func TestDeviceConfigAndFirmware(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "lamp", "")
	d := e.device(t, m, `{"led": true}`)
	c := model.DeviceClaims{ModelCode: "lamp", Key: d.Key}
	d, err := e.svc.AuthenticateDevice(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := e.svc.DeviceConfig(t.Context(), d, c)
	if err != nil || string(cfg) != `{"led":true}` {
		t.Errorf("DeviceConfig: %s, %v", cfg, err)
	}

	_, _, err = e.svc.DeviceFirmware(t.Context(), d)
	wantIs(t, err, model.ErrNotFound)

	data := image(esp32image.ChipESP32C6, "3.1.4")
	up, err := e.svc.UploadFirmware(t.Context(), m.ID, data, model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, blob, err := e.svc.DeviceFirmware(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	got, _ := io.ReadAll(blob)
	if !sameFirmware(f, up.Firmware) || !bytes.Equal(got, data) {
		t.Errorf("DeviceFirmware: %+v (%d bytes), want %+v (%d bytes)", f, len(got), up, len(data))
	}
}
