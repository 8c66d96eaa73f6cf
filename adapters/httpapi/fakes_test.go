package httpapi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Test doubles of the inbound ports and the token verifier. They keep just
// enough state to behave like the core at the HTTP boundary, and record
// what the adapter passed them.

var testEpoch = time.Date(2026, 3, 7, 8, 0, 0, 0, time.UTC)

type fakeCatalog struct {
	mu       sync.Mutex
	nextID   int64
	models   map[int64]model.DeviceModel
	devices  map[int64]model.Device
	firmware map[int64][]storedFirmware // newest last
	// fail makes the named method return the error.
	fail map[string]error
	// panicIn makes the named method panic.
	panicIn string
	// delay makes every call sleep first (shutdown drain tests).
	delay time.Duration

	// Recorded inputs.
	lastFilter     ports.DeviceFilter
	lastUpdate     ports.ModelUpdate
	lastDevUpdate  ports.DeviceUpdate
	lastNewModel   ports.NewModel
	lastNewDevice  ports.NewDevice
	lastNVSSize    int
	lastUploadOpts model.UploadOptions
	lastUpload     []byte
	lastCtx        context.Context
	openBlobs      atomic.Int64
}

type storedFirmware struct {
	meta model.Firmware
	data []byte
}

func newFakeCatalog() *fakeCatalog {
	return &fakeCatalog{
		models:   map[int64]model.DeviceModel{},
		devices:  map[int64]model.Device{},
		firmware: map[int64][]storedFirmware{},
		fail:     map[string]error{},
	}
}

func (f *fakeCatalog) enter(ctx context.Context, name string) error {
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	f.mu.Lock()
	f.lastCtx = ctx
	err := f.fail[name]
	p := f.panicIn == name
	f.mu.Unlock()
	if p {
		panic("fake catalog: boom in " + name)
	}
	return err
}

func (f *fakeCatalog) id() int64 { f.nextID++; return f.nextID }

// setFail makes method fail with err (nil: succeed again).
func (f *fakeCatalog) setFail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, method)
		return
	}
	f.fail[method] = err
}

func (f *fakeCatalog) addModel(code string, schema string) model.DeviceModel {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := model.DeviceModel{ID: f.id(), Code: code, Name: "Model " + code, CreatedAt: testEpoch, UpdatedAt: testEpoch}
	if schema != "" {
		m.ConfigSchema = json.RawMessage(schema)
	}
	f.models[m.ID] = m
	return m
}

func (f *fakeCatalog) addDevice(modelID int64, key string, active bool) model.Device {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := testEpoch.Add(time.Hour)
	d := model.Device{
		ID: f.id(), Key: key, DeviceModelID: modelID, ModelCode: f.models[modelID].Code,
		Config: json.RawMessage(`{"interval":60}`), Active: active, RotationState: model.RotationOK,
		SecretCreatedAt: &testEpoch, LastSeenAt: &seen, CreatedAt: testEpoch, UpdatedAt: testEpoch,
	}
	f.devices[d.ID] = d
	return d
}

func (f *fakeCatalog) addFirmware(modelID int64, version string, data []byte) model.Firmware {
	f.mu.Lock()
	defer f.mu.Unlock()
	sum := sha256.Sum256(data)
	fw := model.Firmware{
		ID: f.id(), DeviceModelID: modelID, Version: version, ProjectName: "blink", IDFVersion: "v5.4",
		Chip: "esp32s3", ChipID: 9, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)),
		UploadedAt: testEpoch.Add(2 * time.Hour),
	}
	at := fw.UploadedAt.Add(time.Duration(fw.ID) * time.Second) // later releases are later
	fw.ReleasedAt = &at
	f.firmware[modelID] = append(f.firmware[modelID], storedFirmware{fw, bytes.Clone(data)})
	m := f.models[modelID]
	m.FirmwareVersion = version
	f.models[modelID] = m
	return fw
}

func (f *fakeCatalog) CreateModel(ctx context.Context, in ports.NewModel) (model.DeviceModel, error) {
	if err := f.enter(ctx, "CreateModel"); err != nil {
		return model.DeviceModel{}, err
	}
	f.mu.Lock()
	f.lastNewModel = in
	for _, m := range f.models {
		if m.Code == in.Code {
			f.mu.Unlock()
			return model.DeviceModel{}, fmt.Errorf("code %q: %w", in.Code, model.ErrConflict)
		}
	}
	f.mu.Unlock()
	if !model.ModelCodePattern.MatchString(in.Code) {
		return model.DeviceModel{}, model.Invalid("code", "must match %s", model.ModelCodePattern)
	}
	m := f.addModel(in.Code, string(in.ConfigSchema))
	f.mu.Lock()
	defer f.mu.Unlock()
	m.Name = in.Name
	f.models[m.ID] = m
	return m, nil
}

func (f *fakeCatalog) GetModel(ctx context.Context, id int64) (model.DeviceModel, error) {
	if err := f.enter(ctx, "GetModel"); err != nil {
		return model.DeviceModel{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.models[id]
	if !ok {
		return model.DeviceModel{}, fmt.Errorf("model %d: %w", id, model.ErrNotFound)
	}
	return m, nil
}

func (f *fakeCatalog) ListModels(ctx context.Context) ([]model.DeviceModel, error) {
	if err := f.enter(ctx, "ListModels"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []model.DeviceModel
	for _, m := range f.models {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeCatalog) UpdateModel(ctx context.Context, id int64, in ports.ModelUpdate) (model.DeviceModel, error) {
	if err := f.enter(ctx, "UpdateModel"); err != nil {
		return model.DeviceModel{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastUpdate = in
	m, ok := f.models[id]
	if !ok {
		return model.DeviceModel{}, model.ErrNotFound
	}
	if in.Name != nil {
		m.Name = *in.Name
	}
	if in.SetSchema {
		m.ConfigSchema = in.ConfigSchema
	}
	m.UpdatedAt = testEpoch.Add(time.Minute)
	f.models[id] = m
	return m, nil
}

func (f *fakeCatalog) DeleteModel(ctx context.Context, id int64) error {
	if err := f.enter(ctx, "DeleteModel"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.models[id]; !ok {
		return model.ErrNotFound
	}
	for _, d := range f.devices {
		if d.DeviceModelID == id {
			return fmt.Errorf("model %d has devices: %w", id, model.ErrConflict)
		}
	}
	delete(f.models, id)
	return nil
}

func (f *fakeCatalog) UploadFirmware(ctx context.Context, modelID int64, data []byte, opts model.UploadOptions) (model.FirmwareUpload, error) {
	if err := f.enter(ctx, "UploadFirmware"); err != nil {
		return model.FirmwareUpload{}, err
	}
	f.mu.Lock()
	f.lastUpload = data
	f.lastUploadOpts = opts
	_, ok := f.models[modelID]
	f.mu.Unlock()
	if !ok {
		return model.FirmwareUpload{}, model.ErrNotFound
	}
	if !bytes.HasPrefix(data, []byte{0xE9}) {
		return model.FirmwareUpload{}, model.Invalid("firmware", "bad magic byte 0x%02x at offset 0 (want 0xe9)", firstByte(data))
	}
	fw := f.addFirmware(modelID, "1.0.0", data)
	if opts.Store {
		f.mu.Lock()
		fws := f.firmware[modelID]
		fws[len(fws)-1].meta.ReleasedAt = nil
		fw = fws[len(fws)-1].meta
		f.mu.Unlock()
	}
	return model.FirmwareUpload{Firmware: fw, Released: !opts.Store}, nil
}

func (f *fakeCatalog) ReleaseFirmware(ctx context.Context, modelID int64, sha256 string) (model.Firmware, bool, error) {
	if err := f.enter(ctx, "ReleaseFirmware"); err != nil {
		return model.Firmware{}, false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.models[modelID]; !ok {
		return model.Firmware{}, false, model.ErrNotFound
	}
	fws := f.firmware[modelID]
	var metas []model.Firmware
	for _, s := range fws {
		metas = append(metas, s.meta)
	}
	rel, released := model.ReleasedIn(metas)
	for i := len(fws) - 1; i >= 0; i-- {
		if fws[i].meta.SHA256 != sha256 {
			continue
		}
		if released && rel.ID == fws[i].meta.ID {
			return fws[i].meta, false, nil
		}
		at := testEpoch.Add(24 * time.Hour)
		if released {
			at = rel.ReleasedAt.Add(time.Second)
		}
		fws[i].meta.ReleasedAt = &at
		return fws[i].meta, true, nil
	}
	return model.Firmware{}, false, fmt.Errorf("firmware %s: %w", sha256, model.ErrNotFound)
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

type fakeBlob struct {
	*bytes.Reader
	open *atomic.Int64
}

func (b fakeBlob) Close() error { b.open.Add(-1); return nil }
func (b fakeBlob) Size() int64  { return b.Reader.Size() }
func (f *fakeCatalog) blob(data []byte) ports.Blob {
	f.openBlobs.Add(1)
	return fakeBlob{bytes.NewReader(data), &f.openBlobs}
}

func (f *fakeCatalog) OpenFirmware(ctx context.Context, modelID int64) (model.Firmware, ports.Blob, error) {
	if err := f.enter(ctx, "OpenFirmware"); err != nil {
		return model.Firmware{}, nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fws := f.firmware[modelID]
	if len(fws) == 0 {
		return model.Firmware{}, nil, fmt.Errorf("firmware of model %d: %w", modelID, model.ErrNotFound)
	}
	cur := fws[len(fws)-1]
	return cur.meta, f.blob(cur.data), nil
}

func (f *fakeCatalog) ListFirmware(ctx context.Context, modelID int64) ([]model.Firmware, error) {
	if err := f.enter(ctx, "ListFirmware"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.models[modelID]; !ok {
		return nil, model.ErrNotFound
	}
	var out []model.Firmware
	fws := f.firmware[modelID]
	for i := len(fws) - 1; i >= 0; i-- {
		out = append(out, fws[i].meta)
	}
	return out, nil
}

func (f *fakeCatalog) CreateDevice(ctx context.Context, in ports.NewDevice) (model.Device, error) {
	if err := f.enter(ctx, "CreateDevice"); err != nil {
		return model.Device{}, err
	}
	f.mu.Lock()
	f.lastNewDevice = in
	m, ok := f.models[in.DeviceModelID]
	n := len(f.devices)
	f.mu.Unlock()
	if !ok {
		return model.Device{}, model.ConflictOn("device_model_id", "device model %d does not exist", in.DeviceModelID)
	}
	active := in.Active == nil || *in.Active
	d := f.addDevice(m.ID, fmt.Sprintf("dev%05d", n), active)
	f.mu.Lock()
	defer f.mu.Unlock()
	d.Config = in.Config
	d.Tags = in.Tags
	d.SecretCreatedAt, d.LastSeenAt = nil, nil
	f.devices[d.ID] = d
	return d, nil
}

func (f *fakeCatalog) GetDevice(ctx context.Context, id int64) (model.Device, error) {
	if err := f.enter(ctx, "GetDevice"); err != nil {
		return model.Device{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devices[id]
	if !ok {
		return model.Device{}, model.ErrNotFound
	}
	return d, nil
}

func (f *fakeCatalog) ListDevices(ctx context.Context, flt ports.DeviceFilter) (ports.DevicePage, error) {
	if err := f.enter(ctx, "ListDevices"); err != nil {
		return ports.DevicePage{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastFilter = flt
	var all []model.Device
	for _, d := range f.devices {
		if d.ID <= flt.AfterID ||
			(flt.ModelID != nil && d.DeviceModelID != *flt.ModelID) ||
			(flt.Active != nil && d.Active != *flt.Active) ||
			(flt.RotationState != nil && d.RotationState != *flt.RotationState) ||
			(flt.FirmwareVersion != nil && (d.Reported == nil || d.Reported.FirmwareVersion != *flt.FirmwareVersion)) ||
			(flt.SeenBefore != nil && d.LastSeenAt != nil && !d.LastSeenAt.Before(*flt.SeenBefore)) {
			continue
		}
		all = append(all, d)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	var page ports.DevicePage
	if len(all) > flt.Limit {
		all = all[:flt.Limit]
		page.NextAfterID = all[len(all)-1].ID
	}
	page.Devices = all
	return page, nil
}

func (f *fakeCatalog) UpdateDevice(ctx context.Context, id int64, in ports.DeviceUpdate) (model.Device, error) {
	if err := f.enter(ctx, "UpdateDevice"); err != nil {
		return model.Device{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastDevUpdate = in
	d, ok := f.devices[id]
	if !ok {
		return model.Device{}, model.ErrNotFound
	}
	if in.Config != nil {
		d.Config = in.Config
	}
	if in.Active != nil {
		d.Active = *in.Active
	}
	if in.Tags != nil {
		d.Tags = *in.Tags
	}
	f.devices[id] = d
	return d, nil
}

func (f *fakeCatalog) DeleteDevice(ctx context.Context, id int64) error {
	if err := f.enter(ctx, "DeleteDevice"); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.devices[id]; !ok {
		return model.ErrNotFound
	}
	delete(f.devices, id)
	return nil
}

func (f *fakeCatalog) Provisioning(ctx context.Context, id int64) (ports.Provisioning, error) {
	if err := f.enter(ctx, "Provisioning"); err != nil {
		return ports.Provisioning{}, err
	}
	d, err := f.GetDevice(ctx, id)
	if err != nil {
		return ports.Provisioning{}, err
	}
	return ports.Provisioning{
		DeviceKey: d.Key, ClientID: d.ClientID(), ClientSecret: "s3cret-" + d.Key,
		TokenURL: "http://kc/token", BaseURL: "http://mdm", MQTTURL: "mqtt://broker:1883",
	}, nil
}

func (f *fakeCatalog) ProvisioningNVS(ctx context.Context, id int64, size int) ([]byte, error) {
	if err := f.enter(ctx, "ProvisioningNVS"); err != nil {
		return nil, err
	}
	if _, err := f.GetDevice(ctx, id); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.lastNVSSize = size
	f.mu.Unlock()
	img := bytes.Repeat([]byte{0xFF}, size)
	copy(img, "NVSIMAGE")
	return img, nil
}

func (f *fakeCatalog) IdentityStatus(ctx context.Context, id int64) (model.IdentityStatus, error) {
	if err := f.enter(ctx, "IdentityStatus"); err != nil {
		return model.IdentityStatus{}, err
	}
	d, err := f.GetDevice(ctx, id)
	if err != nil {
		return model.IdentityStatus{}, err
	}
	return model.IdentityStatus{ClientID: d.ClientID(), Exists: true, Enabled: true, Problems: []string{"no role mapper"}}, nil
}

func (f *fakeCatalog) SyncIdentity(ctx context.Context, id int64) (model.IdentityStatus, error) {
	if err := f.enter(ctx, "SyncIdentity"); err != nil {
		return model.IdentityStatus{}, err
	}
	d, err := f.GetDevice(ctx, id)
	if err != nil {
		return model.IdentityStatus{}, err
	}
	return model.IdentityStatus{ClientID: d.ClientID(), Exists: true, Enabled: true, ServiceAccount: true}, nil
}

// fakeDeviceAPI resolves device claims against the fake catalog.
type fakeDeviceAPI struct {
	cat  *fakeCatalog
	fail map[string]error
}

func (a *fakeDeviceAPI) setFail(method string, err error) {
	a.cat.mu.Lock()
	defer a.cat.mu.Unlock()
	if err == nil {
		delete(a.fail, method)
		return
	}
	a.fail[method] = err
}

func (a *fakeDeviceAPI) failure(method string) error {
	a.cat.mu.Lock()
	defer a.cat.mu.Unlock()
	return a.fail[method]
}

func (a *fakeDeviceAPI) AuthenticateDevice(ctx context.Context, c model.DeviceClaims) (model.Device, error) {
	if err := a.failure("AuthenticateDevice"); err != nil {
		return model.Device{}, err
	}
	a.cat.mu.Lock()
	defer a.cat.mu.Unlock()
	for _, d := range a.cat.devices {
		if d.Key == c.Key {
			if d.ModelCode != c.ModelCode {
				return model.Device{}, fmt.Errorf("model mismatch: %w", model.ErrUnauthenticated)
			}
			if !d.Active {
				return model.Device{}, fmt.Errorf("device %s inactive: %w", d.Key, model.ErrForbidden)
			}
			return d, nil
		}
	}
	return model.Device{}, fmt.Errorf("unknown device: %w", model.ErrUnauthenticated)
}

func (a *fakeDeviceAPI) DeviceConfig(ctx context.Context, d model.Device, c model.DeviceClaims) (json.RawMessage, error) {
	if err := a.failure("DeviceConfig"); err != nil {
		return nil, err
	}
	return d.Config, nil
}

func (a *fakeDeviceAPI) DeviceFirmware(ctx context.Context, d model.Device) (model.Firmware, ports.Blob, error) {
	return a.cat.OpenFirmware(ctx, d.DeviceModelID)
}

// fakeSecret is the secret the fake device API hands out.
const fakeSecret = "fake-rotated-secret-0123456789abcdef"

func (a *fakeDeviceAPI) FetchCredentials(_ context.Context, d model.Device) (ports.Provisioning, error) {
	if err := a.failure("FetchCredentials"); err != nil {
		return ports.Provisioning{}, err
	}
	return ports.Provisioning{DeviceKey: d.Key, ClientID: d.ClientID(), ClientSecret: fakeSecret, TokenURL: "http://idp/token"}, nil
}

func (a *fakeDeviceAPI) AckCredentials(_ context.Context, _ model.Device, digest string) error {
	if err := a.failure("AckCredentials"); err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(fakeSecret))
	if !strings.EqualFold(digest, hex.EncodeToString(sum[:])) {
		return fmt.Errorf("digest mismatch: %w", model.ErrConflict)
	}
	return nil
}

// ReportState validates r as the core does and keeps it as d's latest
// report, received at testEpoch plus a day.
func (a *fakeDeviceAPI) ReportState(_ context.Context, d model.Device, r model.StateReport) error {
	if err := a.failure("ReportState"); err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return err
	}
	r.At = testEpoch.Add(24 * time.Hour)
	a.cat.mu.Lock()
	defer a.cat.mu.Unlock()
	dev, ok := a.cat.devices[d.ID]
	if !ok {
		return model.ErrNotFound
	}
	dev.Reported, dev.LastSeenAt = &r, &r.At
	a.cat.devices[d.ID] = dev
	return nil
}

func (a *fakeDeviceAPI) OfferedFirmware(ctx context.Context, d model.Device) (model.Firmware, error) {
	fw, blob, err := a.cat.OpenFirmware(ctx, d.DeviceModelID)
	if err != nil {
		return model.Firmware{}, err
	}
	return fw, blob.Close()
}

// FirmwareCounts counts the fake's active devices by model and reported
// version, as the repository does.
func (f *fakeCatalog) FirmwareCounts(ctx context.Context) ([]model.FirmwareCount, error) {
	if err := f.enter(ctx, "FirmwareCounts"); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	counts := map[model.FirmwareCount]int{}
	for _, d := range f.devices {
		if !d.Active {
			continue
		}
		k := model.FirmwareCount{ModelID: d.DeviceModelID, ModelCode: d.ModelCode}
		if d.Reported != nil {
			k.Version = d.Reported.FirmwareVersion
		}
		counts[k]++
	}
	out := make([]model.FirmwareCount, 0, len(counts))
	for k, n := range counts {
		k.Devices = n
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ModelCode != out[j].ModelCode {
			return out[i].ModelCode < out[j].ModelCode
		}
		return out[i].Version < out[j].Version
	})
	return out, nil
}

// fakeVerifier knows a fixed set of tokens.
type fakeVerifier struct {
	admins  map[string]model.Principal
	devices map[string]model.DeviceClaims
	// down makes every verification fail as unavailable.
	down bool
	// seen records every token presented (to check logs never hold them).
	mu   sync.Mutex
	seen []string
}

const (
	tokAdmin      = "tok-admin-7f3a9c"
	tokViewer     = "tok-viewer-11be20"
	tokNoRole     = "tok-norole-5c5c5c"
	tokDeviceLike = "tok-device-as-admin-d00d"
	tokWeird      = "tok-weird-error"
)

func newFakeVerifier() *fakeVerifier {
	return &fakeVerifier{
		admins: map[string]model.Principal{
			tokAdmin:  {Subject: "alice", Roles: []string{"offline_access", httpapi.DefaultAdminRole}},
			tokViewer: {Subject: "victor", Roles: []string{httpapi.DefaultViewerRole}},
			tokNoRole: {Subject: "nobody"},
			// A token that verifies against the issuer but carries only
			// the device role: it must never pass the admin API.
			tokDeviceLike: {ClientID: "iotdevice-sensor-abcd1234", Roles: []string{"iotdevice"}},
		},
		devices: map[string]model.DeviceClaims{},
	}
}

func (v *fakeVerifier) addDevice(token string, d model.Device) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.devices[token] = model.DeviceClaims{
		ClientID: d.ClientID(), ModelCode: d.ModelCode, Key: d.Key,
		IssuedAt: time.Now(), ExpiresAt: time.Now().Add(5 * time.Minute),
	}
}

func (v *fakeVerifier) VerifyAdmin(ctx context.Context, raw string) (model.Principal, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seen = append(v.seen, raw)
	if v.down {
		return model.Principal{}, &model.UnavailableError{Service: "keycloak", Err: fmt.Errorf("jwks fetch: dial tcp 10.0.0.7:8443: connection refused")}
	}
	if raw == tokWeird {
		return model.Principal{}, fmt.Errorf("jwt parser exploded at 0xdeadbeef")
	}
	if _, ok := v.devices[raw]; ok {
		return model.Principal{}, fmt.Errorf("azp is a device: %w", model.ErrUnauthenticated)
	}
	p, ok := v.admins[raw]
	if !ok {
		return model.Principal{}, fmt.Errorf("signature invalid: %w", model.ErrUnauthenticated)
	}
	return p, nil
}

func (v *fakeVerifier) VerifyDevice(ctx context.Context, raw string) (model.DeviceClaims, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.seen = append(v.seen, raw)
	if v.down {
		return model.DeviceClaims{}, &model.UnavailableError{Service: "keycloak", Err: fmt.Errorf("jwks fetch failed")}
	}
	if raw == tokWeird {
		return model.DeviceClaims{}, fmt.Errorf("jwt parser exploded at 0xdeadbeef")
	}
	c, ok := v.devices[raw]
	if !ok {
		return model.DeviceClaims{}, fmt.Errorf("not a device token: %w", model.ErrUnauthenticated)
	}
	return c, nil
}

var (
	_ ports.ModelAdmin        = (*fakeCatalog)(nil)
	_ ports.FirmwareAdmin     = (*fakeCatalog)(nil)
	_ ports.DeviceAdmin       = (*fakeCatalog)(nil)
	_ ports.ProvisioningAdmin = (*fakeCatalog)(nil)
	_ ports.IdentityAdmin     = (*fakeCatalog)(nil)
	_ ports.DeviceAPI         = (*fakeDeviceAPI)(nil)
	_ ports.FleetReader       = (*fakeCatalog)(nil)
	_ ports.TokenVerifier     = (*fakeVerifier)(nil)
)

// catalogDeps is deps with cat serving every admin port.
func catalogDeps(cat *fakeCatalog, deps httpapi.Deps) httpapi.Deps {
	deps.Models, deps.Firmware, deps.DeviceAdmin, deps.Provisioning, deps.Identity, deps.Fleet = cat, cat, cat, cat, cat, cat
	return deps
}
