package mdm_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

var t0 = time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC)

// env is a Service over fresh fakes.
type env struct {
	svc      *mdm.Service
	store    *portstest.Store
	idp      *portstest.IdentityProvider
	notifier *portstest.Notifier
	fw       *portstest.BlobStore
	clock    *portstest.Clock
	// deps and cfg are what svc was made with (restart makes another).
	deps mdm.Deps
	cfg  mdm.Config

	mu   sync.Mutex
	errs []reported
}

type reported struct {
	op  string
	err error
}

type option func(*mdm.Deps, *mdm.Config)

func withRand(r io.Reader) option { return func(d *mdm.Deps, _ *mdm.Config) { d.Rand = r } }

func withConfig(f func(*mdm.Config)) option { return func(_ *mdm.Deps, c *mdm.Config) { f(c) } }

func withIdentity(p ports.IdentityProvider) option {
	return func(d *mdm.Deps, _ *mdm.Config) { setIdentity(d, p) }
}

// setIdentity makes p every identity-provider port of d.
func setIdentity(d *mdm.Deps, p ports.IdentityProvider) {
	d.Clients, d.Directory, d.Rotator, d.Policy = p, p, p, p
}

// skewedClock is another machine's clock: base's time plus off.
type skewedClock struct {
	base ports.Clock
	off  time.Duration
}

func (c skewedClock) Now() time.Time { return c.base.Now().Add(c.off) }

// withIdPSkew gives the service a fake identity provider whose clock runs
// off ahead of the service's (behind when negative), as Keycloak's may on
// another machine.
func withIdPSkew(off time.Duration) option {
	return func(d *mdm.Deps, _ *mdm.Config) {
		setIdentity(d, portstest.NewIdentityProvider(skewedClock{base: d.Clock, off: off}))
	}
}

func newEnv(t *testing.T, opts ...option) *env {
	t.Helper()
	e := &env{clock: portstest.NewClock(t0), notifier: portstest.NewNotifier(), fw: portstest.NewBlobStore()}
	e.store = portstest.NewStore(e.clock)
	e.idp = portstest.NewIdentityProvider(e.clock)
	deps := mdm.Deps{
		Models: e.store, Devices: e.store, Firmware: e.store, Blobs: e.fw,
		Notifier: e.notifier, Clock: e.clock,
		OnError: func(_ context.Context, op string, err error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.errs = append(e.errs, reported{op, err})
		},
	}
	setIdentity(&deps, e.idp)
	cfg := mdm.Config{
		TokenURL: "https://kc.example/realms/iot/protocol/openid-connect/token",
		BaseURL:  "https://mdm.example",
		MQTTURL:  "mqtts://mqtt.example:8883",
	}
	for _, o := range opts {
		o(&deps, &cfg)
	}
	if p, ok := deps.Clients.(*portstest.IdentityProvider); ok {
		e.idp = p // an option's fake (withIdPSkew)
	}
	e.deps, e.cfg = deps, cfg
	e.svc = mdm.New(deps, cfg)
	return e
}

func (e *env) reported() []reported {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]reported(nil), e.errs...)
}

func (e *env) model(t *testing.T, code, schema string) model.DeviceModel {
	t.Helper()
	in := ports.NewModel{Code: code, Name: "Model " + code}
	if schema != "" {
		in.ConfigSchema = json.RawMessage(schema)
	}
	m, err := e.svc.CreateModel(t.Context(), in)
	if err != nil {
		t.Fatalf("CreateModel(%s): %v", code, err)
	}
	return m
}

func (e *env) device(t *testing.T, m model.DeviceModel, config string) model.Device {
	t.Helper()
	d, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(config)})
	if err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	return d
}

func (e *env) deviceCount(t *testing.T) int {
	t.Helper()
	p, err := e.store.ListDevices(context.Background(), ports.DeviceFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(p.Devices)
}

func (e *env) idpCalls(op string) []string {
	var out []string
	for _, c := range e.idp.Calls() {
		if c.Op == op {
			out = append(out, c.ClientID)
		}
	}
	return out
}

// wantValidation checks that err is a *model.ValidationError on field whose
// reason contains every one of parts.
func wantValidation(t *testing.T, err error, field string, parts ...string) {
	t.Helper()
	var ve *model.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got error %v, want a *model.ValidationError on %q", err, field)
	}
	if ve.Field != field {
		t.Errorf("got ValidationError field %q (%s), want %q", ve.Field, ve.Reason, field)
	}
	for _, p := range parts {
		if !strings.Contains(ve.Reason, p) {
			t.Errorf("got reason %q, want it to mention %q", ve.Reason, p)
		}
	}
}

// wantConflictOn checks that err is a *model.ConflictError on field (a
// well-formed input the current state refuses) whose reason contains every
// one of parts.
func wantConflictOn(t *testing.T, err error, field string, parts ...string) {
	t.Helper()
	var ce *model.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("got error %v, want a *model.ConflictError on %q", err, field)
	}
	if ce.Field != field {
		t.Errorf("got ConflictError field %q (%s), want %q", ce.Field, ce.Reason, field)
	}
	for _, p := range parts {
		if !strings.Contains(ce.Reason, p) {
			t.Errorf("got reason %q, want it to mention %q", ce.Reason, p)
		}
	}
}

func wantIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

// image builds a valid application image for chip with version.
func image(chip esp32image.ChipID, version string) []byte {
	desc := esp32imagetest.SampleDesc(chip)
	desc.Version = version
	return esp32imagetest.New(chip, 4, true, &desc).Bytes()
}

// repeatReader yields b forever.
type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// keyBytes returns the 16 random bytes one key draw consumes, giving key
// (8 chars of [a-z0-9]) from the first 8 and filler after it.
func keyBytes(key string) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 16)
	for i := range key {
		b[i] = byte(strings.IndexByte(alphabet, key[i]))
	}
	return b
}

func ptr[T any](v T) *T { return &v }

// sameFirmware compares two firmware records by value (ReleasedAt is a
// pointer: its time, not its address).
func sameFirmware(a, b model.Firmware) bool {
	ra, rb := a.ReleasedAt, b.ReleasedAt
	if (ra == nil) != (rb == nil) || (ra != nil && !ra.Equal(*rb)) {
		return false
	}
	a.ReleasedAt, b.ReleasedAt = nil, nil
	return a == b
}
