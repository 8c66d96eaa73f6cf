package mdm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

const ledSchema = `{"type":"object","properties":{"led":{"type":"boolean"},"name":{"type":"string","maxLength":8}},"required":["led"]}`

func TestCreateDeviceValidation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config string
		model  int64 // 0: the model with ledSchema
		field  string
		reason []string
	}{
		{"config missing", "", 0, "config", []string{"required"}},
		{"config blank", "  ", 0, "config", []string{"required"}},
		{"config null", "null", 0, "config", []string{"object", "null"}},
		{"config array", `[{"led": true}]`, 0, "config", []string{"object", "array"}},
		{"config string", `"x"`, 0, "config", []string{"object", "string"}},
		{"config number", `12`, 0, "config", []string{"object", "number"}},
		{"config boolean", `true`, 0, "config", []string{"object", "boolean"}},
		{"config invalid JSON", `{"led": tru}`, 0, "config", []string{"JSON"}},
		{"config two values", `{} {}`, 0, "config", []string{"JSON"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.model(t, "lamp", ledSchema)
			id := m.ID
			if tc.model != 0 {
				id = tc.model
			}
			var cfg json.RawMessage
			if tc.config != "" {
				cfg = json.RawMessage(tc.config)
			}
			_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: id, Config: cfg})
			wantValidation(t, err, tc.field, tc.reason...)
			if calls := e.idp.Calls(); len(calls) != 0 {
				t.Errorf("the identity provider was called: %v", calls)
			}
			if n := e.deviceCount(t); n != 0 {
				t.Errorf("%d devices stored", n)
			}
		})
	}
}

func TestCreateDevice(t *testing.T) {
	for _, tc := range []struct {
		name       string
		active     *bool
		config     string
		wantActive bool
		wantConfig string
	}{
		{"defaults to active", nil, "{ \"led\": true }", true, `{"led":true}`},
		{"inactive", ptr(false), `{"led":false,"extra":[1,2]}`, false, `{"led":false,"extra":[1,2]}`},
		{"explicitly active", ptr(true), `{"led":true}`, true, `{"led":true}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.model(t, "lamp", ledSchema)
			d, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(tc.config), Active: tc.active})
			if err != nil {
				t.Fatalf("CreateDevice: %v", err)
			}
			if !model.DeviceKeyPattern.MatchString(d.Key) {
				t.Errorf("key %q does not match %s", d.Key, model.DeviceKeyPattern)
			}
			if d.ID == 0 || d.DeviceModelID != m.ID || d.ModelCode != "lamp" || d.Active != tc.wantActive ||
				d.RotationState != model.RotationOK || string(d.Config) != tc.wantConfig {
				t.Errorf("got %+v (config %s)", d, d.Config)
			}
			if d.SecretCreatedAt == nil || !d.SecretCreatedAt.Equal(t0) {
				t.Errorf("SecretCreatedAt = %v, want %v", d.SecretCreatedAt, t0)
			}
			if want := "iotdevice-lamp-" + d.Key; d.ClientID() != want || !e.idp.Has(want) {
				t.Errorf("client %s: ClientID() %s, exists %v", want, d.ClientID(), e.idp.Has(want))
			}
			stored, err := e.svc.GetDevice(t.Context(), d.ID)
			if err != nil || stored.Key != d.Key || string(stored.Config) != tc.wantConfig {
				t.Errorf("GetDevice: %+v, %v", stored, err)
			}
		})
	}
}

func TestCreateDeviceKeysAreUniform(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	seen := map[string]bool{}
	counts := map[rune]int{}
	for range 200 {
		d := e.device(t, m, `{}`)
		if seen[d.Key] {
			t.Fatalf("key %s drawn twice", d.Key)
		}
		seen[d.Key] = true
		for _, c := range d.Key {
			counts[c]++
		}
	}
	// 1600 characters over 36 symbols: every symbol shows up.
	if len(counts) != 36 {
		t.Errorf("only %d of 36 key characters seen in 1600 draws", len(counts))
	}
}

func TestCreateDeviceRejectsBiasedBytes(t *testing.T) {
	// Bytes 252..255 would favour a-d under a plain modulo: they are
	// skipped. 36 -> 'a', 37 -> 'b', ... (36 + i) % 36 = i.
	rnd := []byte{255, 36, 252, 37, 253, 38, 254, 39, 40, 41, 42, 43, 0, 0, 0, 0}
	e := newEnv(t, withRand(bytes.NewReader(rnd)))
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	if d.Key != "abcdefgh" {
		t.Errorf("key %q, want abcdefgh", d.Key)
	}
}

func TestCreateDeviceKeyCollisions(t *testing.T) {
	t.Run("client exists: retried with a new key", func(t *testing.T) {
		e := newEnv(t, withRand(io.MultiReader(bytes.NewReader(keyBytes("aaaaaaaa")), bytes.NewReader(keyBytes("bbbbbbbb")))))
		m := e.model(t, "m", "")
		e.idp.Put("iotdevice-m-aaaaaaaa", "someone-elses-secret", t0)
		d := e.device(t, m, `{}`)
		if d.Key != "bbbbbbbb" {
			t.Errorf("key %q, want bbbbbbbb", d.Key)
		}
		if got := e.idpCalls("DeleteClient"); len(got) != 0 {
			t.Errorf("deleted clients %v; the colliding client is not ours to delete", got)
		}
		if !e.idp.Has("iotdevice-m-aaaaaaaa") {
			t.Errorf("the existing client was removed")
		}
	})
	t.Run("device row exists: client undone, retried", func(t *testing.T) {
		e := newEnv(t, withRand(io.MultiReader(bytes.NewReader(keyBytes("aaaaaaaa")), bytes.NewReader(keyBytes("bbbbbbbb")))))
		other := e.model(t, "other", "")
		m := e.model(t, "m", "")
		// A device of another model holds the key, so the client id is
		// free but the insert collides.
		taken := model.Device{Key: "aaaaaaaa", DeviceModelID: other.ID, Config: json.RawMessage(`{}`), Active: true}
		if err := e.store.CreateDevice(t.Context(), &taken, nil); err != nil {
			t.Fatal(err)
		}
		d := e.device(t, m, `{}`)
		if d.Key != "bbbbbbbb" {
			t.Errorf("key %q, want bbbbbbbb", d.Key)
		}
		if e.idp.Has("iotdevice-m-aaaaaaaa") {
			t.Errorf("the client of the colliding attempt was left behind")
		}
		if got := e.idpCalls("DeleteClient"); !slices.Equal(got, []string{"iotdevice-m-aaaaaaaa"}) {
			t.Errorf("DeleteClient calls %v", got)
		}
	})
	t.Run("gives up after a few attempts", func(t *testing.T) {
		e := newEnv(t, withRand(repeatReader(0))) // always "aaaaaaaa"
		m := e.model(t, "m", "")
		e.idp.Put("iotdevice-m-aaaaaaaa", "x", t0)
		_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
		wantIs(t, err, model.ErrConflict)
		if n := len(e.idpCalls("CreateClient")); n < 2 || n > 10 {
			t.Errorf("%d CreateClient attempts, want a few", n)
		}
		if n := e.deviceCount(t); n != 0 {
			t.Errorf("%d devices stored", n)
		}
	})
	t.Run("random source fails", func(t *testing.T) {
		broken := errors.New("entropy gone")
		e := newEnv(t, withRand(io.MultiReader(bytes.NewReader([]byte{1, 2, 3}), errReader{broken})))
		m := e.model(t, "m", "")
		_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
		wantIs(t, err, broken)
		if calls := e.idp.Calls(); len(calls) != 0 {
			t.Errorf("identity provider called: %v", calls)
		}
	})
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// ctxIdP records whether DeleteClient got a live context.
type ctxIdP struct {
	*portstest.IdentityProvider
	deleteCtxErr []error
}

func (p *ctxIdP) DeleteClient(ctx context.Context, clientID string) error {
	p.deleteCtxErr = append(p.deleteCtxErr, ctx.Err())
	return p.IdentityProvider.DeleteClient(ctx, clientID)
}

func TestCreateDeviceAllOrNothing(t *testing.T) {
	t.Run("identity provider fails: no row", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		down := &model.UnavailableError{Service: "keycloak", Err: errors.New("connection refused")}
		e.idp.Hook = func(op, _ string) error {
			if op == "CreateClient" {
				return down
			}
			return nil
		}
		_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
		wantIs(t, err, model.ErrUnavailable)
		if n := e.deviceCount(t); n != 0 {
			t.Errorf("%d devices stored", n)
		}
		if got := e.idpCalls("CreateClient"); len(got) != 1 {
			t.Errorf("CreateClient called %d times, want 1 (only conflicts are retried)", len(got))
		}
	})
	t.Run("insert fails: client deleted with a live context", func(t *testing.T) {
		idp := &ctxIdP{}
		e := newEnv(t, withIdentity(idp))
		idp.IdentityProvider = e.idp
		m := e.model(t, "m", "")
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		e.store.Hook = func(op string) error {
			if op == "CreateDevice" {
				cancel() // the caller gives up while the insert fails
				return context.Canceled
			}
			return nil
		}
		_, err := e.svc.CreateDevice(ctx, ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
		wantIs(t, err, context.Canceled)
		created := e.idpCalls("CreateClient")
		deleted := e.idpCalls("DeleteClient")
		if len(created) != 1 || !slices.Equal(deleted, created) {
			t.Fatalf("created %v, deleted %v; want the created client deleted", created, deleted)
		}
		if e.idp.Has(created[0]) {
			t.Errorf("client %s left behind", created[0])
		}
		if len(idp.deleteCtxErr) != 1 || idp.deleteCtxErr[0] != nil {
			t.Errorf("DeleteClient context errors %v, want one live context", idp.deleteCtxErr)
		}
		if r := e.reported(); len(r) != 0 {
			t.Errorf("OnError called: %v", r)
		}
	})
	t.Run("insert and cleanup fail: OnError hears of the client", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		dbDown := &model.UnavailableError{Service: "postgres", Err: errors.New("gone")}
		kcDown := &model.UnavailableError{Service: "keycloak", Err: errors.New("gone too")}
		e.store.Hook = func(op string) error {
			if op == "CreateDevice" {
				return dbDown
			}
			return nil
		}
		e.idp.Hook = func(op, _ string) error {
			if op == "DeleteClient" {
				return kcDown
			}
			return nil
		}
		_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
		if !errors.Is(err, dbDown) || errors.Is(err, kcDown) {
			t.Errorf("got %v, want the insert error only", err)
		}
		r := e.reported()
		created := e.idpCalls("CreateClient")
		if len(r) != 1 || !errors.Is(r[0].err, kcDown) || !strings.Contains(r[0].err.Error(), created[0]) {
			t.Fatalf("OnError got %v, want the failed cleanup of %s", r, created)
		}
		for _, rr := range r {
			if secret, _ := e.idp.ClientSecret(context.Background(), created[0]); strings.Contains(rr.err.Error(), secret) {
				t.Errorf("the client secret reached OnError")
			}
		}
	})
}

// A well-formed device that the current state refuses: a model that does
// not exist, a config its model's schema does not accept. Conflicts (409),
// not invalid input: the same request may succeed against another state.
func TestCreateDeviceConflictsWithTheState(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config string
		model  int64 // 0: the model with ledSchema
		field  string
		reason []string
	}{
		{"schema: required missing", `{}`, 0, "config", []string{"config_schema", "led"}},
		{"schema: wrong type", `{"led": "yes"}`, 0, "config", []string{"/led", "boolean"}},
		{"schema: too long", `{"led": true, "name": "much too long"}`, 0, "config", []string{"/name"}},
		{"unknown model", `{}`, 999, "device_model_id", []string{"999"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.model(t, "lamp", ledSchema)
			id := m.ID
			if tc.model != 0 {
				id = tc.model
			}
			_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: id, Config: json.RawMessage(tc.config)})
			wantConflictOn(t, err, tc.field, tc.reason...)
			if calls := e.idp.Calls(); len(calls) != 0 {
				t.Errorf("the identity provider was called: %v", calls)
			}
			if n := e.deviceCount(t); n != 0 {
				t.Errorf("%d devices stored", n)
			}
		})
	}
}

func TestGetDeviceNotFound(t *testing.T) {
	e := newEnv(t)
	_, err := e.svc.GetDevice(t.Context(), 7)
	wantIs(t, err, model.ErrNotFound)
}

func TestListDevices(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	var ids []int64
	for range 3 {
		ids = append(ids, e.device(t, m, `{}`).ID)
	}
	bad := model.RotationState("DONE")
	for _, tc := range []struct {
		name  string
		f     ports.DeviceFilter
		want  []int64
		field string
	}{
		{"default limit", ports.DeviceFilter{}, ids, ""},
		{"page", ports.DeviceFilter{Limit: 2}, ids[:2], ""},
		{"after", ports.DeviceFilter{Limit: 2, AfterID: ids[1]}, ids[2:], ""},
		{"model filter", ports.DeviceFilter{ModelID: ptr(m.ID + 100)}, nil, ""},
		{"limit too big", ports.DeviceFilter{Limit: 1001}, nil, "limit"},
		{"negative limit", ports.DeviceFilter{Limit: -1}, nil, "limit"},
		{"negative cursor", ports.DeviceFilter{AfterID: -5}, nil, "cursor"},
		{"unknown state", ports.DeviceFilter{RotationState: &bad}, nil, "rotation_state"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := e.svc.ListDevices(t.Context(), tc.f)
			if tc.field != "" {
				wantValidation(t, err, tc.field)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []int64
			for _, d := range p.Devices {
				got = append(got, d.ID)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestUpdateDevice(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         ports.DeviceUpdate
		wantConfig string
		wantActive bool
		notified   bool
		field      string
	}{
		{"config", ports.DeviceUpdate{Config: json.RawMessage(`{"led": false}`)}, `{"led":false}`, true, true, ""},
		{"same config reformatted", ports.DeviceUpdate{Config: json.RawMessage(`{ "name":"a",  "led": true }`)}, `{"name":"a","led":true}`, true, false, ""},
		{"deactivate", ports.DeviceUpdate{Active: ptr(false)}, `{"led":true,"name":"a"}`, false, false, ""},
		{"both", ports.DeviceUpdate{Config: json.RawMessage(`{"led":false}`), Active: ptr(false)}, `{"led":false}`, false, true, ""},
		{"nothing", ports.DeviceUpdate{}, `{"led":true,"name":"a"}`, true, false, ""},
		{"array config", ports.DeviceUpdate{Config: json.RawMessage(`[]`)}, "", false, false, "config"},
		{"null config", ports.DeviceUpdate{Config: json.RawMessage(`null`)}, "", false, false, "config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := e.model(t, "lamp", ledSchema)
			d := e.device(t, m, `{"led":true,"name":"a"}`)
			got, err := e.svc.UpdateDevice(t.Context(), d.ID, tc.in)
			stored, _ := e.svc.GetDevice(t.Context(), d.ID)
			if tc.field != "" {
				wantValidation(t, err, tc.field)
				if string(stored.Config) != string(d.Config) || !stored.Active {
					t.Errorf("a refused update changed the device: %+v", stored)
				}
			} else {
				if err != nil {
					t.Fatalf("UpdateDevice: %v", err)
				}
				for what, g := range map[string]model.Device{"result": got, "stored": stored} {
					if !jsonSame(g.Config, tc.wantConfig) || g.Active != tc.wantActive || g.Key != d.Key {
						t.Errorf("%s: got config %s active %v, want %s %v", what, g.Config, g.Active, tc.wantConfig, tc.wantActive)
					}
				}
			}
			var want []portstest.Notification
			if tc.notified {
				want = []portstest.Notification{{Kind: "config", ClientID: d.ClientID()}}
			}
			if sent := e.notifier.Sent(); !slices.Equal(sent, want) {
				t.Errorf("notifications %v, want %v", sent, want)
			}
		})
	}
}

func jsonSame(a json.RawMessage, b string) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal([]byte(b), &vb) != nil {
		return false
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return string(ja) == string(jb)
}

func TestUpdateDeviceNotifierFailure(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{"a":1}`)
	e.notifier.Err = &model.UnavailableError{Service: "mqtt", Err: errors.New("broker down")}
	got, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Config: json.RawMessage(`{"a":2}`)})
	if err != nil {
		t.Fatalf("UpdateDevice failed with the broker down: %v", err)
	}
	if string(got.Config) != `{"a":2}` {
		t.Errorf("config %s not stored", got.Config)
	}
	if r := e.reported(); len(r) != 1 || !errors.Is(r[0].err, model.ErrUnavailable) {
		t.Errorf("OnError got %v, want the notifier failure", r)
	}
}

func TestUpdateDeviceNotFound(t *testing.T) {
	e := newEnv(t)
	for _, in := range []ports.DeviceUpdate{{Config: json.RawMessage(`{}`)}, {Active: ptr(true)}} {
		_, err := e.svc.UpdateDevice(t.Context(), 99, in)
		wantIs(t, err, model.ErrNotFound)
	}
}

func TestDeleteDevice(t *testing.T) {
	t.Run("row first, then client", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		d := e.device(t, m, `{}`)
		var rowGoneFirst *bool
		e.idp.Hook = func(op, clientID string) error {
			if op == "DeleteClient" {
				_, err := e.store.GetDevice(context.Background(), d.ID)
				rowGoneFirst = ptr(errors.Is(err, model.ErrNotFound))
			}
			return nil
		}
		if err := e.svc.DeleteDevice(t.Context(), d.ID); err != nil {
			t.Fatal(err)
		}
		if rowGoneFirst == nil || !*rowGoneFirst {
			t.Errorf("client deleted before the row (or not at all): %v", rowGoneFirst)
		}
		if e.idp.Has(d.ClientID()) {
			t.Errorf("client left behind")
		}
		_, err := e.svc.GetDevice(t.Context(), d.ID)
		wantIs(t, err, model.ErrNotFound)
	})
	t.Run("client deletion fails: still succeeds, OnError told", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		d := e.device(t, m, `{}`)
		e.idp.Hook = func(op, _ string) error {
			if op == "DeleteClient" {
				return &model.UnavailableError{Service: "keycloak", Err: errors.New("timeout")}
			}
			return nil
		}
		if err := e.svc.DeleteDevice(t.Context(), d.ID); err != nil {
			t.Fatalf("DeleteDevice: %v", err)
		}
		if _, err := e.svc.GetDevice(t.Context(), d.ID); !errors.Is(err, model.ErrNotFound) {
			t.Errorf("device row left behind: %v", err)
		}
		r := e.reported()
		if len(r) != 1 || !errors.Is(r[0].err, model.ErrUnavailable) || !strings.Contains(r[0].err.Error(), d.ClientID()) {
			t.Errorf("OnError got %v", r)
		}
	})
	t.Run("row deletion fails: client kept", func(t *testing.T) {
		e := newEnv(t)
		m := e.model(t, "m", "")
		d := e.device(t, m, `{}`)
		boom := errors.New("db down")
		e.store.Hook = func(op string) error {
			if op == "DeleteDevice" {
				return boom
			}
			return nil
		}
		wantIs(t, e.svc.DeleteDevice(t.Context(), d.ID), boom)
		if !e.idp.Has(d.ClientID()) {
			t.Errorf("client deleted although the row stays")
		}
	})
	t.Run("missing device", func(t *testing.T) {
		e := newEnv(t)
		wantIs(t, e.svc.DeleteDevice(t.Context(), 5), model.ErrNotFound)
		if calls := e.idp.Calls(); len(calls) != 0 {
			t.Errorf("identity provider called: %v", calls)
		}
	})
}

func TestUpdateDeviceConfigTheSchemaRefuses(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "lamp", ledSchema)
	d := e.device(t, m, `{"led":true,"name":"a"}`)
	_, err := e.svc.UpdateDevice(t.Context(), d.ID, ports.DeviceUpdate{Config: json.RawMessage(`{"led": 1}`)})
	wantConflictOn(t, err, "config", "config_schema", "/led")
	if stored, _ := e.svc.GetDevice(t.Context(), d.ID); string(stored.Config) != string(d.Config) {
		t.Errorf("a refused update changed the device: %s", stored.Config)
	}
	if n := len(e.notifier.Sent()); n != 0 {
		t.Errorf("%d notifications for a refused update", n)
	}
}

// PostgreSQL stores no U+0000 (and the driver would rewrite it, changing
// the value): a name, config or config_schema holding one is refused,
// while an escaped backslash before "u0000" is just text.
func TestNULIsRefusedNotRewritten(t *testing.T) {
	e := newEnv(t)
	_, err := e.svc.CreateModel(t.Context(), ports.NewModel{Code: "n1", Name: "a\x00b"})
	wantValidation(t, err, "name", "U+0000")
	_, err = e.svc.CreateModel(t.Context(), ports.NewModel{Code: "n1", Name: "n", ConfigSchema: json.RawMessage(`{"title":"a\u0000"}`)})
	wantValidation(t, err, "config_schema", "U+0000")
	m := e.model(t, "n2", "")
	for _, cfg := range []string{`{"k":"a\u0000b"}`, `{"a\u0000":1}`, `{"k":[{"deep":"\u0000"}]}`} {
		_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(cfg)})
		wantValidation(t, err, "config", "U+0000")
	}
	d, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{"k":"a\\u0000b"}`)})
	if err != nil || string(d.Config) != `{"k":"a\\u0000b"}` {
		t.Errorf("an escaped backslash before u0000: %s, %v", d.Config, err)
	}
}

func TestConfigErrorsDoNotQuoteValues(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", `{"properties":{"psk":{"type":"string","pattern":"^[0-9a-f]{64}$"},"mail":{"type":"string","format":"email"}}}`)
	for _, cfg := range []string{`{"psk":"hunter2-TopSecret"}`, `{"mail":"hunter2-TopSecret"}`} {
		_, err := e.svc.CreateDevice(t.Context(), ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(cfg)})
		wantConflictOn(t, err, "config", "config_schema")
		if strings.Contains(err.Error(), "TopSecret") {
			t.Errorf("error quotes the config value: %v", err)
		}
	}
}
