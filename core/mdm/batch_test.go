package mdm_test

import (
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/nvs"
	"github.com/espmdm/espmdm/ports"
)

func batchOf(modelID int64, n int, config string, size int) ports.NewDeviceBatch {
	in := ports.NewDeviceBatch{DeviceModelID: modelID, Size: size, Devices: make([]ports.BatchDevice, n)}
	for i := range in.Devices {
		in.Devices[i].Config = json.RawMessage(config)
	}
	return in
}

// runBatch collects a batch's results by index.
func runBatch(t *testing.T, e *env, in ports.NewDeviceBatch) (map[int]ports.BatchResult, error) {
	t.Helper()
	out := map[int]ports.BatchResult{}
	err := e.svc.CreateDeviceBatch(t.Context(), in, func(r ports.BatchResult) {
		if _, dup := out[r.Index]; dup {
			t.Errorf("index %d reported twice", r.Index)
		}
		out[r.Index] = r
	})
	return out, err
}

// A bad batch is refused as a whole, with a field, before the identity
// provider is asked for anything.
func TestDeviceBatchValidation(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", `{"type":"object","properties":{"interval":{"type":"integer","minimum":1}},"required":["interval"]}`)
	one := batchOf(m.ID, 3, `{"interval":5}`, mdm.DefaultNVSSize)
	offSchema := batchOf(m.ID, 3, `{"interval":5}`, mdm.DefaultNVSSize)
	offSchema.Devices[2].Config = json.RawMessage(`{"interval":0}`)
	notObject := batchOf(m.ID, 2, `{"interval":5}`, mdm.DefaultNVSSize)
	notObject.Devices[1].Config = json.RawMessage(`[1]`)
	tagged := batchOf(m.ID, 1, `{"interval":5}`, mdm.DefaultNVSSize)
	tagged.Devices[0].Tags = []string{"Hall"}
	unknown := one
	unknown.DeviceModelID = m.ID + 100
	for _, c := range []struct {
		name  string
		in    ports.NewDeviceBatch
		field string
	}{
		{"none", batchOf(m.ID, 0, `{}`, mdm.DefaultNVSSize), "count"},
		{"too many", batchOf(m.ID, ports.MaxBatchDevices+1, `{"interval":5}`, mdm.DefaultNVSSize), "count"},
		{"size below", batchOf(m.ID, 1, `{"interval":5}`, 0x2000), "size"},
		{"size not a page", batchOf(m.ID, 1, `{"interval":5}`, 0x6001), "size"},
		{"size above", batchOf(m.ID, 1, `{"interval":5}`, 0x101000), "size"},
		{"unknown model", unknown, "device_model_id"},
		{"one config off the schema", offSchema, "devices[2].config"},
		{"a config not an object", notObject, "devices[1].config"},
		{"tags", tagged, "devices[0].tags"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, call := range []func() error{
				func() error { return e.svc.CheckDeviceBatch(t.Context(), c.in) },
				func() error {
					_, err := runBatch(t, e, c.in)
					return err
				},
			} {
				var ve *model.ValidationError
				if err := call(); !errors.As(err, &ve) || ve.Field != c.field {
					t.Fatalf("got %v, want a validation error on %s", err, c.field)
				}
			}
		})
	}
	if calls := e.idp.Calls(); len(calls) != 0 {
		t.Errorf("the identity provider was called for refused batches: %v", calls)
	}
	if n := e.deviceCount(t); n != 0 {
		t.Errorf("%d devices stored", n)
	}
}

// A batch makes every device with its partition, its secret the client's,
// at most BatchConcurrency at once, and audits each twice.
func TestDeviceBatch(t *testing.T) {
	const workers = 3
	e := newEnv(t, withConfig(func(c *mdm.Config) { c.BatchConcurrency = workers }), withAudit())
	m := e.model(t, "m", "")
	var inFlight, most atomic.Int32
	e.idp.Hook = func(op, _ string) error {
		if op == "CreateClient" {
			n := inFlight.Add(1)
			for {
				old := most.Load()
				if n <= old || most.CompareAndSwap(old, n) {
					break
				}
			}
			time.Sleep(2 * time.Millisecond)
			inFlight.Add(-1)
		}
		return nil
	}
	got, err := runBatch(t, e, batchOf(m.ID, 20, `{"a":1}`, 0x4000))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 20 {
		t.Fatalf("%d results, want 20", len(got))
	}
	if most.Load() > workers || most.Load() < 2 {
		t.Errorf("at most %d clients were made at once, want 2..%d", most.Load(), workers)
	}
	for i, r := range got {
		if r.Err != nil {
			t.Fatalf("device %d: %v", i, r.Err)
		}
		if len(r.NVS) != 0x4000 || string(r.Device.Config) != `{"a":1}` || !r.Device.Active {
			t.Errorf("device %d: %d bytes of NVS, config %s, active %v", i, len(r.NVS), r.Device.Config, r.Device.Active)
		}
		entries, err := nvs.Decode(r.NVS)
		if err != nil {
			t.Fatalf("device %d: decode: %v", i, err)
		}
		fields := map[string]any{}
		for _, en := range entries {
			fields[en.Key] = en.Value
		}
		secret, _ := fields["client_secret"].(string)
		if fields["client_id"] != r.Device.ClientID() || fields["device_key"] != r.Device.Key || !e.idp.Authenticates(r.Device.ClientID(), secret) {
			t.Errorf("device %d: the partition's fields do not match its client", i)
		}
	}
	kinds := map[model.AuditKind]int{}
	for _, en := range e.store.Audit().Entries() {
		kinds[en.Kind]++
	}
	if kinds[model.AuditDeviceCreated] != 20 || kinds[model.AuditProvisioningDownloaded] != 20 {
		t.Errorf("audit kinds %v, want 20 device_created and 20 provisioning_downloaded", kinds)
	}
}

// The identity provider goes down in the middle: those made stand, the
// others fail with its error, and no client is left without its device.
func TestDeviceBatchIdentityProviderDown(t *testing.T) {
	e := newEnv(t, withConfig(func(c *mdm.Config) { c.BatchConcurrency = 4 }))
	m := e.model(t, "m", "")
	down := &model.UnavailableError{Service: "keycloak", Err: errors.New("connection refused")}
	var mu sync.Mutex
	made := 0
	e.idp.Hook = func(op, _ string) error {
		mu.Lock()
		defer mu.Unlock()
		if op == "CreateClient" {
			if made >= 10 {
				return down
			}
			made++
		}
		return nil
	}
	got, err := runBatch(t, e, batchOf(m.ID, 30, `{}`, mdm.DefaultNVSSize))
	if err != nil {
		t.Fatal(err)
	}
	var ok, failed []string
	for _, r := range got {
		if r.Err != nil {
			if !errors.Is(r.Err, model.ErrUnavailable) {
				t.Errorf("device %d failed with %v, want the identity provider's unavailability", r.Index, r.Err)
			}
			failed = append(failed, "")
			continue
		}
		ok = append(ok, r.Device.ClientID())
	}
	if len(ok) != 10 || len(failed) != 20 {
		t.Fatalf("%d made, %d failed; want 10 and 20", len(ok), len(failed))
	}
	if n := e.deviceCount(t); n != 10 {
		t.Errorf("%d devices stored, want 10", n)
	}
	var clients []string
	for _, c := range e.idpCalls("CreateClient") {
		if e.idp.Has(c) {
			clients = append(clients, c)
		}
	}
	slices.Sort(clients)
	slices.Sort(ok)
	if !slices.Equal(clients, ok) {
		t.Errorf("clients %v, devices %v: want the same", clients, ok)
	}
}
