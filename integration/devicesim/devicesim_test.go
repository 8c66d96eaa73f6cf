package devicesim_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/integration/devicesim"
	"github.com/espmdm/espmdm/nvs"
)

// fake is a small Keycloak token endpoint plus espmdm's device API, with
// one switch: in grace mode a fetch keeps the old secret valid until the
// ack; in restore mode it stops working at once.
type fake struct {
	t    *testing.T
	srv  *httptest.Server
	mode string

	mu       sync.Mutex
	valid    map[string]map[string]bool // client id -> accepted secrets
	current  map[string]string          // client id -> current secret
	pending  map[string]string          // client id -> generated, unconfirmed secret
	rotating map[string]bool            // client id -> a rotation is under way
	tokens   map[string]string          // token -> client id
	acks     map[string]int
	configs  map[string]int // GET /iot/config per client
	// firmware is the model's released image; assigned are campaign
	// assignments per client id, which take its place (SPEC §16's
	// effective firmware).
	firmware []byte
	assigned map[string][]byte
	// reports are the state reports received, per client, decoded
	// strictly (unknown members are refused, as espmdm does).
	reports map[string][]map[string]any
	// refuseAcks answers every ack 409.
	refuseAcks bool
}

func newFake(t *testing.T, mode string) *fake {
	t.Helper()
	f := &fake{t: t, mode: mode, valid: map[string]map[string]bool{}, current: map[string]string{},
		pending: map[string]string{}, rotating: map[string]bool{}, tokens: map[string]string{}, acks: map[string]int{}, configs: map[string]int{},
		reports: map[string][]map[string]any{}, assigned: map[string][]byte{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", f.token)
	mux.HandleFunc("GET /iot/config", f.auth(func(w http.ResponseWriter, r *http.Request, id string) {
		f.configs[id]++
		fmt.Fprintf(w, `{"client":%q}`, id)
	}))
	mux.HandleFunc("GET /iot/firmware-version", f.auth(func(w http.ResponseWriter, r *http.Request, id string) {
		img := f.effective(id)
		if len(img) == 0 {
			fmt.Fprint(w, `{"firmware_version":null,"sha256":null}`)
			return
		}
		if im, err := esp32image.Parse(img); err == nil && im.AppDesc != nil {
			sum := sha256.Sum256(img)
			fmt.Fprintf(w, `{"firmware_version":%q,"sha256":%q}`, im.AppDesc.Version, hex.EncodeToString(sum[:]))
			return
		}
		fmt.Fprint(w, `{"firmware_version":"1.2.3"}`) // bytes that are no app image
	}))
	mux.HandleFunc("GET /iot/firmware", f.auth(f.serveFirmware))
	mux.HandleFunc("GET /iot/provisioning", f.auth(f.fetch))
	mux.HandleFunc("POST /iot/provisioning/ack", f.auth(f.ack))
	mux.HandleFunc("POST /iot/state", f.auth(f.state))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// partition registers a device and returns its provisioning partition.
func (f *fake) partition(model string) []byte {
	f.t.Helper()
	key := randHex(4)
	id := "iotdevice-" + model + "-" + key
	secret := "s-" + randHex(8)
	f.mu.Lock()
	f.valid[id] = map[string]bool{secret: true}
	f.current[id] = secret
	f.mu.Unlock()
	img, err := nvs.Encode(nvs.Strings("prov",
		nvs.KV{Key: "device_key", Value: key}, nvs.KV{Key: "client_id", Value: id},
		nvs.KV{Key: "client_secret", Value: secret}, nvs.KV{Key: "token_url", Value: f.srv.URL + "/token"},
		nvs.KV{Key: "base_url", Value: f.srv.URL}, nvs.KV{Key: "mqtt_url", Value: "mqtt://127.0.0.1:1"},
	), nvs.Options{Size: 0x6000})
	if err != nil {
		f.t.Fatal(err)
	}
	return img
}

func (f *fake) token(w http.ResponseWriter, r *http.Request) {
	_ = r.ParseForm()
	id, secret := r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.PostForm.Get("grant_type") != "client_credentials" || !f.valid[id][secret] {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":"unauthorized_client","error_description":"Invalid client or Invalid client credentials"}`)
		return
	}
	tok := "t-" + randHex(8)
	f.tokens[tok] = id
	fmt.Fprintf(w, `{"access_token":%q,"expires_in":300,"token_type":"Bearer"}`, tok)
}

func (f *fake) auth(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		id := f.tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		if id == "" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		h(w, r, id)
	}
}

// start begins a rotation of the device (what espmdm does before the nudge).
func (f *fake) start(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotating[id] = true
}

func (f *fake) fetch(w http.ResponseWriter, r *http.Request, id string) {
	secret := f.pending[id]
	switch {
	case !f.rotating[id]:
		secret = f.current[id]
	case secret == "":
		secret = "s-" + randHex(8)
		f.pending[id] = secret
		if f.mode == "restore" {
			f.valid[id] = map[string]bool{}
		}
		f.valid[id][secret] = true
	}
	key := id[strings.LastIndexByte(id, '-')+1:]
	fmt.Fprintf(w, `{"device_key":%q,"client_id":%q,"client_secret":%q}`, key, id, secret)
}

func (f *fake) ack(w http.ResponseWriter, r *http.Request, id string) {
	var body struct {
		Sum string `json:"client_secret_sha256"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	sum := sha256.Sum256([]byte(f.pending[id]))
	if f.refuseAcks || f.pending[id] == "" || body.Sum != hex.EncodeToString(sum[:]) {
		w.WriteHeader(http.StatusConflict)
		return
	}
	f.current[id] = f.pending[id]
	f.valid[id] = map[string]bool{f.pending[id]: true}
	delete(f.pending, id)
	f.rotating[id] = false
	f.acks[id]++
	w.WriteHeader(http.StatusNoContent)
}

// stateMembers are the members SPEC §15 allows in a state report.
var stateMembers = map[string]bool{"firmware_version": true, "secure_version": true, "app_elf_sha256": true,
	"partition": true, "ota_state": true, "ota": true, "reset_reason": true, "uptime_s": true, "free_heap": true,
	"rssi": true, "idf_version": true}

func (f *fake) state(w http.ResponseWriter, r *http.Request, id string) {
	var body map[string]any
	if r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&body) != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	for k := range body {
		if !stateMembers[k] {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
	}
	if v, _ := body["firmware_version"].(string); v == "" {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	f.reports[id] = append(f.reports[id], body)
	w.WriteHeader(http.StatusNoContent)
}

func (f *fake) reportsOf(id string) []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.reports[id]...)
}

// timeout is the restore-mode timeout: the old secret back, the
// unconfirmed one gone.
func (f *fake) timeout(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.valid[id] = map[string]bool{f.current[id]: true}
	delete(f.pending, id)
}

// effective is the device's effective firmware; f.mu is held.
func (f *fake) effective(id string) []byte {
	if img, ok := f.assigned[id]; ok {
		return img
	}
	return f.firmware
}

func (f *fake) assign(id string, img []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if img == nil {
		delete(f.assigned, id)
		return
	}
	f.assigned[id] = img
}

func (f *fake) serveFirmware(w http.ResponseWriter, r *http.Request, id string) {
	firmware := f.effective(id)
	sum := sha256.Sum256(firmware)
	etag := `"` + hex.EncodeToString(sum[:]) + `"`
	w.Header().Set("ETag", etag)
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if rg := r.Header.Get("Range"); rg != "" && r.Header.Get("If-Range") == etag {
		first, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", first, len(firmware)-1, len(firmware)))
		w.Header().Set("Content-Length", strconv.Itoa(len(firmware)-first))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(firmware[first:])
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(firmware)))
	_, _ = w.Write(firmware)
}

func (f *fake) count(m map[string]int, id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return m[id]
}

func newTestFleet(t *testing.T, cfg devicesim.Config) *devicesim.Fleet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fl, err := devicesim.NewFleet(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fl.Close(context.Background()) })
	return fl
}

func add(t *testing.T, fl *devicesim.Fleet, part []byte) *devicesim.Device {
	t.Helper()
	d, err := fl.Add(part)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 5s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestAddReadsThePartition(t *testing.T) {
	f := newFake(t, "grace")
	fl := newTestFleet(t, devicesim.Config{})
	part := f.partition("soil_v1")
	d := add(t, fl, part)
	if d.ModelCode() != "soil_v1" || !strings.HasPrefix(d.ClientID(), "iotdevice-soil_v1-") || d.BaseURL() != f.srv.URL {
		t.Errorf("device %s model %s base %s", d.ClientID(), d.ModelCode(), d.BaseURL())
	}
	if _, err := fl.Add(part); err == nil {
		t.Error("the same device added twice")
	}
	if _, err := fl.Add(make([]byte, 0x3000)); err == nil {
		t.Error("an empty partition booted")
	}
	body, _ := json.Marshal(map[string]any{"partition": "nvs", "size": len(part), "data": part})
	got, err := devicesim.PartitionFromJSON(body)
	if err != nil || string(got) != string(part) {
		t.Errorf("PartitionFromJSON: %v", err)
	}
}

func TestNudgeRotatesWithTwoSlots(t *testing.T) {
	for _, mode := range []string{"grace", "restore"} {
		t.Run(mode, func(t *testing.T) {
			f := newFake(t, mode)
			fl := newTestFleet(t, devicesim.Config{Concurrency: 2})
			d := add(t, fl, f.partition("m"))
			if err := d.Boot(ctx(t)); err != nil {
				t.Fatal(err)
			}
			f.start(d.ClientID())
			if !fl.Deliver("iotsupport/"+d.ClientID()+"/rotation", nil) {
				t.Fatal("the nudge reached no device")
			}
			eventually(t, "ack", func() bool { return d.Stats().Acks == 1 })
			st := d.Stats()
			if st.Nudges != 1 || st.Fetches != 1 || len(st.ConfirmLatencies) != 1 || st.LockedOut != 0 {
				t.Errorf("stats %+v", st)
			}
			chk, err := d.CheckSecrets(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			want := devicesim.SecretCheck{Provisioned: devicesim.Refused, Current: devicesim.Accepted}
			if chk != want {
				t.Errorf("secrets %+v, want %+v", chk, want)
			}
			// Outside a rotation the fetch returns the current secret:
			// nothing changes, no ack.
			if err := d.Rotate(ctx(t)); err != nil || d.Stats().Acks != 1 {
				t.Errorf("rotate outside a rotation: %v, %d acks", err, d.Stats().Acks)
			}
		})
	}
}

func TestCrashAfterFetchInRestoreIsMetered(t *testing.T) {
	f := newFake(t, "restore")
	fl := newTestFleet(t, devicesim.Config{LockoutRetry: 20 * time.Millisecond})
	d := add(t, fl, f.partition("m"))
	d.SetBehaviour(devicesim.Behaviour{Crash: devicesim.CrashAfterFetch})
	f.start(d.ClientID())
	if err := d.Rotate(ctx(t)); !errors.Is(err, devicesim.ErrCrashed) {
		t.Fatalf("Rotate = %v, want ErrCrashed", err)
	}
	// The fetched secret is lost and the old one no longer works.
	st := d.Stats()
	if !st.LockedOutNow || st.Lockouts != 1 || st.Crashes != 1 {
		t.Fatalf("after the crash: %+v, want a running lockout", st)
	}
	rep, err := fl.CheckAll(ctx(t))
	if err != nil || len(rep.LockedOut) != 1 || rep.LockedOut[0] != d.ClientID() {
		t.Fatalf("CheckAll = %+v, %v, want the device locked out", rep, err)
	}
	time.Sleep(100 * time.Millisecond)
	f.timeout(d.ClientID())
	eventually(t, "lockout end", func() bool { return !d.Stats().LockedOutNow })
	if got := d.Stats().LockedOut; got < 100*time.Millisecond {
		t.Errorf("locked out %s, want at least 100ms", got)
	}
	// Crash once: the retry completes.
	if err := d.Rotate(ctx(t)); err != nil || f.count(f.acks, d.ClientID()) != 1 {
		t.Fatalf("retry: %v, %d acks", err, f.count(f.acks, d.ClientID()))
	}
	rep, err = fl.CheckAll(ctx(t))
	if err != nil || len(rep.LockedOut) != 0 || rep.LockedOutSeconds < 0.1 || rep.Lockouts != 1 {
		t.Errorf("CheckAll at the end = %+v, %v", rep, err)
	}
}

// A device that crashed after persisting the new secret boots on it (the
// old one died at the generation, restore mode), promotes it at once and
// acks it, then asks for its config, as the README's firmware steps say.
func TestCrashAfterPersistPromotesNextAtBoot(t *testing.T) {
	f := newFake(t, "restore")
	fl := newTestFleet(t, devicesim.Config{})
	d := add(t, fl, f.partition("m"))
	d.SetBehaviour(devicesim.Behaviour{Crash: devicesim.CrashAfterPersist})
	f.start(d.ClientID())
	if err := d.Rotate(ctx(t)); !errors.Is(err, devicesim.ErrCrashed) {
		t.Fatalf("Rotate = %v, want ErrCrashed", err)
	}
	st := d.Stats()
	if st.LockedOut != 0 || st.Boots != 1 || st.Promotions != 1 || st.Acks != 1 {
		t.Fatalf("after the crash: %+v, want a boot with the next secret, promoted and acked", st)
	}
	if f.count(f.acks, d.ClientID()) != 1 || f.count(f.configs, d.ClientID()) != 1 {
		t.Errorf("server saw %d acks and %d config requests, want 1 and 1", f.count(f.acks, d.ClientID()), f.count(f.configs, d.ClientID()))
	}
	chk, _ := d.CheckSecrets(ctx(t))
	if want := (devicesim.SecretCheck{Provisioned: devicesim.Refused, Current: devicesim.Accepted}); chk != want {
		t.Errorf("secrets %+v, want %+v: the next secret promoted", chk, want)
	}
	if err := d.Rotate(ctx(t)); err != nil || d.Stats().Acks != 1 {
		t.Fatalf("retry: %v", err)
	}
}

// The scenario of review finding F1 in restore mode: a crash before the ack
// leaves the device on its next secret; promoted at boot, it survives a
// second rotation during which it goes away after persisting, and the
// timeout restores a secret it still holds.
func TestTwoRotationsInRestoreKeepAWorkingSecret(t *testing.T) {
	f := newFake(t, "restore")
	fl := newTestFleet(t, devicesim.Config{LockoutRetry: 20 * time.Millisecond})
	d := add(t, fl, f.partition("m"))
	d.SetBehaviour(devicesim.Behaviour{Crash: devicesim.CrashAfterPersist})
	f.start(d.ClientID())
	if err := d.Rotate(ctx(t)); !errors.Is(err, devicesim.ErrCrashed) {
		t.Fatalf("rotation 1: %v, want ErrCrashed", err)
	}
	d.SetBehaviour(devicesim.Behaviour{Crash: devicesim.CrashAfterPersist, CrashAlways: true, StayDown: true})
	f.start(d.ClientID())
	if err := d.Rotate(ctx(t)); !errors.Is(err, devicesim.ErrCrashed) {
		t.Fatalf("rotation 2: %v, want ErrCrashed", err)
	}
	f.timeout(d.ClientID()) // the device stays away past the timeout
	d.SetBehaviour(devicesim.Behaviour{})
	if err := d.Boot(ctx(t)); err != nil {
		t.Fatalf("boot after rotation 2's timeout: %v", err)
	}
	chk, _ := d.CheckSecrets(ctx(t))
	if chk.Current != devicesim.Accepted {
		t.Errorf("secrets %+v: the restored secret is not the device's current one", chk)
	}
	// The retry completes.
	if err := d.Rotate(ctx(t)); err != nil || d.Stats().Acks != 2 {
		t.Fatalf("retry: %v, %d acks", err, d.Stats().Acks)
	}
	if chk, _ := d.CheckSecrets(ctx(t)); chk.Current != devicesim.Accepted || chk.Next != devicesim.NotHeld {
		t.Errorf("secrets after the retry %+v", chk)
	}
}

// A 409 to the ack means the fetched secret is not this rotation's: the
// device erases it and keeps its current secret.
func TestAckConflictErasesNext(t *testing.T) {
	f := newFake(t, "grace")
	f.refuseAcks = true
	fl := newTestFleet(t, devicesim.Config{})
	d := add(t, fl, f.partition("m"))
	f.start(d.ClientID())
	var se *devicesim.StatusError
	if err := d.Rotate(ctx(t)); !errors.As(err, &se) || se.Status != http.StatusConflict {
		t.Fatalf("Rotate = %v, want the ack's 409", err)
	}
	chk, _ := d.CheckSecrets(ctx(t))
	if want := (devicesim.SecretCheck{Provisioned: devicesim.Accepted, Current: devicesim.Accepted}); chk != want {
		t.Errorf("secrets %+v, want %+v: next erased, current kept", chk, want)
	}
}

func TestLegacyOverwritesAndFetchesConfig(t *testing.T) {
	f := newFake(t, "restore")
	fl := newTestFleet(t, devicesim.Config{})
	d := add(t, fl, f.partition("m"))
	d.SetBehaviour(devicesim.Behaviour{Legacy: true})
	f.start(d.ClientID())
	began := time.Now()
	if err := d.Rotate(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if time.Since(began) < 50*time.Millisecond {
		t.Error("no reboot into a later second")
	}
	if f.count(f.acks, d.ClientID()) != 0 || f.count(f.configs, d.ClientID()) != 1 {
		t.Errorf("legacy: %d acks, %d config fetches, want 0 and 1", f.count(f.acks, d.ClientID()), f.count(f.configs, d.ClientID()))
	}
	chk, _ := d.CheckSecrets(ctx(t))
	if chk != (devicesim.SecretCheck{Provisioned: devicesim.Refused, Current: devicesim.Accepted}) {
		t.Errorf("secrets %+v", chk)
	}
}

func TestOfflineAndRouting(t *testing.T) {
	f := newFake(t, "grace")
	fl := newTestFleet(t, devicesim.Config{})
	a, b, c := add(t, fl, f.partition("m1")), add(t, fl, f.partition("m1")), add(t, fl, f.partition("m2"))
	b.SetBehaviour(devicesim.Behaviour{Offline: true})
	fl.Deliver("iotsupport/m1/firmware", []byte(`{"firmware_version":"9.9"}`))
	fl.Deliver("iotsupport/"+b.ClientID()+"/rotation", nil)
	fl.Deliver("iotsupport/"+a.ClientID()+"/config", nil)
	if fl.Deliver("iotsupport/iotdevice-x-abcdefgh/rotation", nil) || fl.Unknown() != 1 {
		t.Error("a message for no device of the fleet was taken")
	}
	eventually(t, "config fetch", func() bool { return a.Stats().ConfigFetches == 1 })
	if st := a.Stats(); st.FirmwareNotices != 1 || st.NotifiedFirmwareVersion != "9.9" || !strings.Contains(string(a.Config()), a.ClientID()) {
		t.Errorf("a: %+v config %s", st, a.Config())
	}
	if st := b.Stats(); st.FirmwareNotices != 0 || st.Nudges != 0 || st.Ignored != 2 {
		t.Errorf("offline b: %+v", st)
	}
	if st := c.Stats(); st.FirmwareNotices != 0 {
		t.Errorf("c of another model: %+v", st)
	}
	if _, err := b.FetchConfig(ctx(t)); !errors.Is(err, devicesim.ErrOffline) {
		t.Errorf("offline FetchConfig = %v", err)
	}
	fs := fl.Stats()
	if fs.Devices != 3 || fs.Total.FirmwareNotices != 1 || fs.Total.ConfigNotices != 1 {
		t.Errorf("fleet stats %+v", fs)
	}
}

func TestFirmwareETagAndRange(t *testing.T) {
	f := newFake(t, "grace")
	f.firmware = []byte(strings.Repeat("firmware-", 1000))
	sum := sha256.Sum256(f.firmware)
	fl := newTestFleet(t, devicesim.Config{})
	d := add(t, fl, f.partition("m"))
	d.SetBehaviour(devicesim.Behaviour{InterruptFirmwareAfter: 1000})
	r, err := d.FetchFirmware(ctx(t))
	if err != nil || !r.Interrupted || r.Size != 1000 || r.Complete {
		t.Fatalf("first = %+v, %v, want cut at 1000", r, err)
	}
	r, err = d.FetchFirmware(ctx(t))
	if err != nil || !r.Resumed || !r.Complete || r.SHA256 != hex.EncodeToString(sum[:]) || r.Received != int64(len(f.firmware)-1000) {
		t.Fatalf("resume = %+v, %v", r, err)
	}
	r, err = d.FetchFirmware(ctx(t))
	if err != nil || !r.NotModified {
		t.Fatalf("again = %+v, %v, want 304", r, err)
	}
	if v, err := d.FirmwareVersion(ctx(t)); err != nil || v != "1.2.3" {
		t.Errorf("FirmwareVersion = %q, %v", v, err)
	}
}

func TestErrorsHoldNoSecret(t *testing.T) {
	f := newFake(t, "grace")
	var mu sync.Mutex
	var lines []string
	fl := newTestFleet(t, devicesim.Config{Logf: func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, fmt.Sprintf(format, args...))
	}})
	d := add(t, fl, f.partition("m"))
	f.mu.Lock()
	f.valid[d.ClientID()] = map[string]bool{} // every secret refused
	f.mu.Unlock()
	_, err := d.FetchConfig(ctx(t))
	if !errors.Is(err, devicesim.ErrLockedOut) {
		t.Fatalf("FetchConfig = %v, want ErrLockedOut", err)
	}
	fl.Deliver("iotsupport/"+d.ClientID()+"/rotation", nil)
	eventually(t, "failed rotation", func() bool { return d.Stats().Errors == 1 })
	mu.Lock()
	defer mu.Unlock()
	texts := append([]string{err.Error(), d.Stats().LastError}, lines...)
	for _, s := range d.Secrets() {
		for _, line := range texts {
			if strings.Contains(line, s) {
				t.Errorf("a secret appears in %q", line)
			}
		}
	}
}

func TestPercentilesOf(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	got := devicesim.PercentilesOf(ds)
	want := devicesim.Percentiles{N: 100, P50: 50 * time.Millisecond, P90: 90 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}
	if got != want {
		t.Errorf("PercentilesOf = %+v, want %+v", got, want)
	}
	if (devicesim.PercentilesOf(nil) != devicesim.Percentiles{}) {
		t.Error("PercentilesOf(nil) not zero")
	}
}

// TestThousandsOfDevices rotates 2,000 devices of one fleet: idle devices
// cost no goroutine, and the work runs on the bounded pool.
func TestThousandsOfDevices(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 rotations")
	}
	const n = 2000
	f := newFake(t, "grace")
	before := runtime.NumGoroutine()
	fl := newTestFleet(t, devicesim.Config{Concurrency: 16})
	var devs []*devicesim.Device
	for range n {
		devs = append(devs, add(t, fl, f.partition("bulk")))
	}
	if g := runtime.NumGoroutine(); g > before+16+10 {
		t.Errorf("%d goroutines with %d idle devices (%d before the fleet), want the pool only", g, n, before)
	}
	for _, d := range devs {
		f.start(d.ClientID())
		fl.Deliver("iotsupport/"+d.ClientID()+"/rotation", nil)
	}
	deadline := time.Now().Add(60 * time.Second)
	for fl.Stats().Total.Acks < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acks after 60s", fl.Stats().Total.Acks, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rep, err := fl.CheckAll(ctx(t))
	if err != nil || rep.Devices != n || len(rep.LockedOut) != 0 || rep.LockedOutSeconds != 0 {
		t.Errorf("CheckAll = %+v, %v", rep, err)
	}
	t.Logf("confirm latency %+v", fl.Stats().ConfirmLatency)
}

func TestEvents(t *testing.T) {
	f := newFake(t, "grace")
	var mu sync.Mutex
	var kinds []devicesim.EventKind
	fl := newTestFleet(t, devicesim.Config{OnEvent: func(e devicesim.Event) {
		mu.Lock()
		defer mu.Unlock()
		kinds = append(kinds, e.Kind)
	}})
	d := add(t, fl, f.partition("m"))
	f.start(d.ClientID())
	fl.Deliver("iotsupport/"+d.ClientID()+"/rotation", nil)
	eventually(t, "ack", func() bool { return d.Stats().Acks == 1 })
	mu.Lock()
	defer mu.Unlock()
	want := []devicesim.EventKind{devicesim.EventNudge, devicesim.EventFetch, devicesim.EventAck}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", kinds, want)
	}
}

func TestBootReportsState(t *testing.T) {
	f := newFake(t, "grace")
	fl := newTestFleet(t, devicesim.Config{FirmwareVersion: "4.2.0"})
	d := add(t, fl, f.partition("m"))
	if err := d.Boot(ctx(t)); err != nil {
		t.Fatal(err)
	}
	reps := f.reportsOf(d.ClientID())
	if len(reps) != 1 {
		t.Fatalf("%d reports after a boot, want 1: %v", len(reps), reps)
	}
	r := reps[0]
	if r["firmware_version"] != "4.2.0" || r["ota_state"] != "valid" || r["partition"] != "ota_0" || r["reset_reason"] != "poweron" {
		t.Errorf("boot report %v", r)
	}
	if _, ok := r["ota"]; ok {
		t.Errorf("a device that never updated reports an OTA attempt: %v", r)
	}
	if st := d.Stats(); st.StateReports != 1 || d.Running() != "4.2.0" {
		t.Errorf("stats %+v, running %s", st, d.Running())
	}
}

func TestInstallFirmwareReportsLikeTheComponent(t *testing.T) {
	f := newFake(t, "grace")
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	desc.Version, desc.SecureVersion = "5.0.1", 2
	f.firmware = esp32imagetest.New(esp32image.ChipESP32, 4, true, &desc).Bytes()
	fl := newTestFleet(t, devicesim.Config{})
	d := add(t, fl, f.partition("m"))
	if err := d.Boot(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.InstallFirmware(ctx(t)); !errors.Is(err, devicesim.ErrNoImage) {
		t.Fatalf("InstallFirmware before a download = %v, want ErrNoImage", err)
	}
	if r, err := d.FetchFirmware(ctx(t)); err != nil || !r.Complete {
		t.Fatalf("FetchFirmware = %+v, %v", r, err)
	}
	v, err := d.InstallFirmware(ctx(t))
	if err != nil || v != "5.0.1" || d.Running() != "5.0.1" {
		t.Fatalf("InstallFirmware = %q, %v; running %s", v, err, d.Running())
	}
	reps := f.reportsOf(d.ClientID())
	if len(reps) != 3 {
		t.Fatalf("%d reports, want boot, pending, confirmed: %v", len(reps), reps)
	}
	pending, valid := reps[1], reps[2]
	ota := map[string]any{"target": "5.0.1", "result": "installed"}
	for i, r := range []map[string]any{pending, valid} {
		if r["firmware_version"] != "5.0.1" || r["partition"] != "ota_1" || r["reset_reason"] != "sw" ||
			r["secure_version"] != float64(2) || len(r["app_elf_sha256"].(string)) != 64 || fmt.Sprint(r["ota"]) != fmt.Sprint(ota) {
			t.Errorf("report %d after the OTA: %v", i+1, r)
		}
	}
	if pending["ota_state"] != "pending_verify" || valid["ota_state"] != "valid" {
		t.Errorf("ota_state %v then %v, want pending_verify then valid", pending["ota_state"], valid["ota_state"])
	}
}

func TestInstallFirmwareRefusesAnImageThatDoesNotVerify(t *testing.T) {
	f := newFake(t, "grace")
	f.firmware = []byte(strings.Repeat("not an image ", 100))
	fl := newTestFleet(t, devicesim.Config{FirmwareVersion: "1.0"})
	d := add(t, fl, f.partition("m"))
	if r, err := d.FetchFirmware(ctx(t)); err != nil || !r.Complete {
		t.Fatalf("FetchFirmware = %+v, %v", r, err)
	}
	if _, err := d.InstallFirmware(ctx(t)); err == nil {
		t.Fatal("InstallFirmware installed something that is not an app image")
	}
	reps := f.reportsOf(d.ClientID())
	if len(reps) != 1 || reps[0]["firmware_version"] != "1.0" || fmt.Sprint(reps[0]["ota"]) != fmt.Sprint(map[string]any{"target": "unknown", "result": "verify_failed"}) {
		t.Errorf("reports %v, want one naming 1.0 with a verify_failed attempt", reps)
	}
}

// appImage is a valid app image of version.
func appImage(version string, seed int) []byte {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	desc.Version = version
	im := esp32imagetest.New(esp32image.ChipESP32, 4, true, &desc)
	im.Segments = append(im.Segments, esp32imagetest.Segment{Addr: 0x3FFB0000, Data: esp32imagetest.Filler(uint32(seed), 4096)})
	return im.Bytes()
}

// TestDeviceFirmwareTopic: iotsupport/<client_id>/firmware (a campaign's
// nudge) reaches that device only; the model's topic every device of the
// model. Without FollowFirmware a notice is only counted.
func TestDeviceFirmwareTopic(t *testing.T) {
	f := newFake(t, "grace")
	f.firmware = appImage("2.0.0", 1)
	fl := newTestFleet(t, devicesim.Config{})
	a, b := add(t, fl, f.partition("m1")), add(t, fl, f.partition("m1"))
	if !fl.Deliver("iotsupport/"+a.ClientID()+"/firmware", []byte(`{"firmware_version":"2.0.0","sha256":"ab"}`)) {
		t.Fatal("the device's firmware topic was not taken")
	}
	fl.Deliver("iotsupport/m1/firmware", []byte(`{"firmware_version":"2.0.0"}`))
	if fl.Deliver("iotsupport/iotdevice-m1-zzzzzzzz/firmware", nil) {
		t.Error("a firmware nudge for no device of the fleet was taken")
	}
	if st := a.Stats(); st.FirmwareNotices != 2 || st.DeviceFirmwareNotices != 1 || st.NotifiedFirmwareVersion != "2.0.0" {
		t.Errorf("a: %+v, want 2 notices, 1 on its own topic", st)
	}
	if st := b.Stats(); st.FirmwareNotices != 1 || st.DeviceFirmwareNotices != 0 {
		t.Errorf("b: %+v, want the model's notice only", st)
	}
	time.Sleep(100 * time.Millisecond)
	if st := fl.Stats().Total; st.FirmwareChecks != 0 || st.FirmwareDownloads != 0 {
		t.Errorf("without FollowFirmware: %d checks, %d downloads, want none", st.FirmwareChecks, st.FirmwareDownloads)
	}
}

// TestFollowFirmwareAtBootAndOnTheCampaignNudge: at boot every device
// reports and installs the released firmware; a campaign's assignment and
// nudge move one device only, through a cut download resumed, with the
// reports of the component (pending_verify, then valid).
func TestFollowFirmwareAtBootAndOnTheCampaignNudge(t *testing.T) {
	f := newFake(t, "grace")
	f.firmware = appImage("1.1.0", 1)
	fl := newTestFleet(t, devicesim.Config{FollowFirmware: true, FirmwareVersion: "1.0.0"})
	a, b := add(t, fl, f.partition("m")), add(t, fl, f.partition("m"))
	if err := fl.BootAll(ctx(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "1.1.0 on both", func() bool { return a.Running() == "1.1.0" && b.Running() == "1.1.0" })
	eventually(t, "reports of 1.1.0 valid", func() bool {
		ra, rb := f.reportsOf(a.ClientID()), f.reportsOf(b.ClientID())
		return len(ra) == 3 && len(rb) == 3 && ra[2]["ota_state"] == "valid" && rb[2]["ota_state"] == "valid"
	})
	for _, d := range []*devicesim.Device{a, b} {
		if r := f.reportsOf(d.ClientID())[0]; r["firmware_version"] != "1.0.0" || r["reset_reason"] != "poweron" {
			t.Errorf("%s: first report %v, want 1.0.0 at power-on", d.ClientID(), r)
		}
	}
	a.SetBehaviour(devicesim.Behaviour{InterruptFirmwareAfter: 1000})
	f.assign(a.ClientID(), appImage("2.0.0", 2))
	fl.Deliver("iotsupport/"+a.ClientID()+"/firmware", []byte(`{"firmware_version":"2.0.0"}`))
	eventually(t, "a on 2.0.0, confirmed", func() bool {
		r := f.reportsOf(a.ClientID())
		return len(r) == 5 && r[4]["ota_state"] == "valid"
	})
	r := f.reportsOf(a.ClientID())
	ota := fmt.Sprint(map[string]any{"target": "2.0.0", "result": "installed"})
	if r[3]["firmware_version"] != "2.0.0" || r[3]["ota_state"] != "pending_verify" || fmt.Sprint(r[3]["ota"]) != ota ||
		r[4]["firmware_version"] != "2.0.0" || fmt.Sprint(r[4]["ota"]) != ota {
		t.Errorf("a's reports after the campaign's nudge %v, %v", r[3], r[4])
	}
	if st := a.Stats(); st.FirmwareInstalls != 2 || st.FirmwareDownloads != 3 || st.Errors != 0 {
		t.Errorf("a: %+v, want 2 installs, 3 downloads (one cut and resumed), no errors", st)
	}
	time.Sleep(100 * time.Millisecond)
	if st := b.Stats(); b.Running() != "1.1.0" || st.FirmwareChecks != 1 || len(f.reportsOf(b.ClientID())) != 3 {
		t.Errorf("b: running %s, %+v, want 1.1.0 untouched by a's nudge", b.Running(), st)
	}
}

// TestBadFirmwareRollsBack: a version in BadFirmware installs, never
// checks in and is rolled back: the device reports its previous version,
// valid, with ota rolled_back, never reports the bad version as running,
// and does not fetch it again; withdrawn, nothing happens.
func TestBadFirmwareRollsBack(t *testing.T) {
	for _, fleetWide := range []bool{false, true} {
		t.Run(fmt.Sprintf("fleetWide=%v", fleetWide), func(t *testing.T) {
			f := newFake(t, "grace")
			cfg := devicesim.Config{FollowFirmware: true, FirmwareVersion: "1.0.0"}
			if fleetWide {
				cfg.BadFirmware = []string{"2.0.0"}
			}
			fl := newTestFleet(t, cfg)
			bad, good := add(t, fl, f.partition("m")), add(t, fl, f.partition("m"))
			if !fleetWide {
				bad.SetBehaviour(devicesim.Behaviour{BadFirmware: []string{"2.0.0", "2.0.1"}})
			}
			if err := fl.BootAll(ctx(t)); err != nil {
				t.Fatal(err)
			}
			img := appImage("2.0.0", 3)
			f.assign(bad.ClientID(), img)
			if !fleetWide {
				f.assign(good.ClientID(), img)
			}
			fl.Deliver("iotsupport/"+bad.ClientID()+"/firmware", nil)
			fl.Deliver("iotsupport/"+good.ClientID()+"/firmware", nil)
			eventually(t, "the rollback", func() bool { return bad.Stats().FirmwareRollbacks == 1 })
			eventually(t, "its report", func() bool { return len(f.reportsOf(bad.ClientID())) == 2 })
			reps := f.reportsOf(bad.ClientID())
			last := reps[len(reps)-1]
			if last["firmware_version"] != "1.0.0" || last["ota_state"] != "valid" || last["reset_reason"] != "panic" ||
				fmt.Sprint(last["ota"]) != fmt.Sprint(map[string]any{"target": "2.0.0", "result": "rolled_back"}) {
				t.Errorf("report after the rollback %v, want 1.0.0 valid with ota {2.0.0 rolled_back}", last)
			}
			for _, r := range reps {
				if r["firmware_version"] != "1.0.0" {
					t.Errorf("a report names %v: the bad image never runs long enough to report", r["firmware_version"])
				}
			}
			if bad.Running() != "1.0.0" {
				t.Errorf("running %s, want 1.0.0", bad.Running())
			}
			if !fleetWide {
				eventually(t, "the good device on 2.0.0", func() bool { return good.Running() == "2.0.0" })
			}
			// Offered again: not fetched again. The reboot after the
			// rollback queued a check of its own, which may run before or
			// after this notice (a queued check answers every notice that
			// came before it starts): what counts is that one runs after
			// the notice, and downloads nothing.
			downloads, checks := bad.Stats().FirmwareDownloads, bad.Stats().FirmwareChecks
			fl.Deliver("iotsupport/"+bad.ClientID()+"/firmware", nil)
			eventually(t, "a check after the notice", func() bool { return bad.Stats().FirmwareChecks > checks })
			res, err := bad.Update(ctx(t))
			if err != nil || res.Outcome != devicesim.UpdateSkipped || res.Offered != "2.0.0" {
				t.Errorf("Update = %+v, %v, want skipped", res, err)
			}
			// Withdrawn (rollback_on_abort): the released firmware, none here.
			f.assign(bad.ClientID(), nil)
			if res, err := bad.Update(ctx(t)); err != nil || res.Outcome != devicesim.UpdateNone || res.Running != "1.0.0" {
				t.Errorf("Update after the withdrawal = %+v, %v, want none on 1.0.0", res, err)
			}
			if st := bad.Stats(); st.FirmwareDownloads != downloads || st.Errors != 0 || st.FirmwareInstalls != 0 {
				t.Errorf("stats %+v: downloads %d before, want no new download, no error, no install", st, downloads)
			}
		})
	}
}

// TestInstallFirmwareOfABadVersion: InstallFirmware driven by hand rolls a
// BadFirmware version back too.
func TestInstallFirmwareOfABadVersion(t *testing.T) {
	f := newFake(t, "grace")
	f.firmware = appImage("3.0.0", 4)
	fl := newTestFleet(t, devicesim.Config{FirmwareVersion: "1.0.0", BadFirmware: []string{"3.0.0"}})
	d := add(t, fl, f.partition("m"))
	if r, err := d.FetchFirmware(ctx(t)); err != nil || !r.Complete {
		t.Fatalf("FetchFirmware = %+v, %v", r, err)
	}
	if _, err := d.InstallFirmware(ctx(t)); !errors.Is(err, devicesim.ErrRolledBack) {
		t.Fatalf("InstallFirmware = %v, want ErrRolledBack", err)
	}
	if d.Running() != "1.0.0" {
		t.Errorf("running %s", d.Running())
	}
}

// TestInstantFirmwareReportsAtOnce: with InstantFirmware a device takes
// its campaign's target without downloading it: one report, the target
// running and confirmed.
func TestInstantFirmwareReportsAtOnce(t *testing.T) {
	f := newFake(t, "grace")
	fl := newTestFleet(t, devicesim.Config{FollowFirmware: true, InstantFirmware: true, FirmwareVersion: "1.0.0"})
	a := add(t, fl, f.partition("m"))
	if err := fl.BootAll(ctx(t)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the boot's report", func() bool { return len(f.reportsOf(a.ClientID())) == 1 })
	f.assign(a.ClientID(), appImage("2.0.0", 2))
	fl.Deliver("iotsupport/"+a.ClientID()+"/firmware", []byte(`{"firmware_version":"2.0.0"}`))
	eventually(t, "2.0.0 reported valid", func() bool {
		r := f.reportsOf(a.ClientID())
		return len(r) == 2 && r[1]["firmware_version"] == "2.0.0" && r[1]["ota_state"] == "valid"
	})
	if st := a.Stats(); a.Running() != "2.0.0" || st.FirmwareDownloads != 0 || st.FirmwareInstalls != 1 || st.Errors != 0 {
		t.Errorf("a: running %s, %+v; want 2.0.0, no download, 1 install, no errors", a.Running(), st)
	}
}
