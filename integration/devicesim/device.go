package devicesim

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/espmdm/espmdm/nvs"
)

// CrashPoint is where a device crashes during a rotation.
type CrashPoint int

const (
	// NoCrash means the device never crashes.
	NoCrash CrashPoint = iota
	// CrashAfterFetch makes the device crash after GET
	// /iot/provisioning, before persisting: the fetched secret is lost.
	CrashAfterFetch
	// CrashAfterPersist makes the device crash after writing the new
	// secret to its next slot, before the token and the ack.
	CrashAfterPersist
)

// Behaviour is how a device acts; the zero value follows the protocol at
// once.
type Behaviour struct {
	// Offline makes the device ignore every message and do nothing.
	Offline bool
	// Slow is a delay before each step of an action (it holds a worker).
	Slow time.Duration
	// Legacy makes the device follow the reviewed design with a single
	// slot: fetch, overwrite the current secret, reboot, token, GET
	// /iot/config; no ack.
	Legacy bool
	// Crash is where the device crashes in a rotation. A crashed device
	// reboots from what it persisted (current, next).
	Crash CrashPoint
	// CrashAlways makes the device crash in every rotation; otherwise it
	// crashes only in the first and acts normally from the next nudge on.
	CrashAlways bool
	// RebootDelay is how long a crashed device takes to boot again (an
	// ESP32 needs a second or two); 0 boots at once.
	RebootDelay time.Duration
	// StayDown keeps a crashed device powered off: it does not reboot and
	// ignores everything (as Offline) until SetBehaviour and Boot bring it
	// back.
	StayDown bool
	// InterruptFirmwareAfter, when positive, cuts the next firmware
	// download after this many bytes (once), as a power loss would; the
	// next FetchFirmware resumes it with a Range request.
	InterruptFirmwareAfter int64
	// BadFirmware are versions that fail on this device (with
	// Config.BadFirmware, which holds for every device): the image
	// downloads, verifies and installs, then never checks in after its
	// reboot, and the bootloader goes back to the previous image. The
	// device reports its previous version, valid, with ota {target: the
	// version, result: rolled_back}, and does not fetch that image again.
	BadFirmware []string
}

// Sentinel errors of device actions.
var (
	// ErrRefused means Keycloak refused the secret (invalid client
	// credentials).
	ErrRefused = errors.New("devicesim: secret refused")
	// ErrLockedOut means the device needed a token and no secret it
	// holds works.
	ErrLockedOut = errors.New("devicesim: locked out: no secret the device holds is accepted")
	// ErrCrashed means the action ended in a simulated crash.
	ErrCrashed = errors.New("devicesim: device crashed (simulated)")
	// ErrOffline means the device is offline and did nothing.
	ErrOffline = errors.New("devicesim: device is offline")
)

// StatusError is an unexpected HTTP status from espmdm or Keycloak.
type StatusError struct {
	Op     string // e.g. "GET /iot/provisioning"
	Status int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("devicesim: %s: status %d", e.Op, e.Status)
}

// Device is one simulated ESP32. Its methods are safe for concurrent use.
type Device struct {
	f                                     *Fleet
	key, clientID, modelCode              string
	tokenURL, baseURL, mqttURL            string
	provisioned                           string // the partition's secret, for CheckSecrets
	mqttPassword                          string // prov/mqtt_password, or a fetched one
	cm                                    *autopaho.ConnectionManager
	rotMu                                 sync.Mutex
	otaMu                                 sync.Mutex // one Update at a time
	mu                                    sync.Mutex
	current, next                         string // the persisted slots
	tok                                   cachedToken
	beh                                   Behaviour
	crashed                               bool
	nudgeAt                               time.Time
	config                                json.RawMessage
	fw                                    firmwareState
	failed                                failedImage // the last image that failed here
	updateQueued                          bool
	app                                   appState
	seen                                  []string // every secret held or handed out
	stats                                 Stats
	lockStart                             time.Time
	retry                                 *time.Timer
	rotationQueued, configQueued, stopped bool
}

type cachedToken struct {
	value   string
	expires time.Time
}

type firmwareState struct {
	data     []byte
	etag     string
	total    int64
	complete bool
	cut      bool // the interruption happened
}

func newDevice(f *Fleet, partition []byte) (*Device, error) {
	entries, err := nvs.Decode(partition)
	if err != nil {
		return nil, fmt.Errorf("devicesim: provisioning partition: %w", err)
	}
	prov := map[string]string{}
	for _, e := range entries {
		if s, ok := e.Value.(string); ok && e.Namespace == "prov" {
			prov[e.Key] = s
		}
	}
	for _, k := range []string{"device_key", "client_id", "client_secret", "token_url", "base_url"} {
		if prov[k] == "" {
			return nil, fmt.Errorf("devicesim: provisioning partition lacks prov/%s", k)
		}
	}
	d := &Device{
		f: f, key: prov["device_key"], clientID: prov["client_id"],
		tokenURL: prov["token_url"], baseURL: strings.TrimRight(prov["base_url"], "/"), mqttURL: prov["mqtt_url"],
		provisioned: prov["client_secret"], current: prov["client_secret"], mqttPassword: prov["mqtt_password"],
	}
	rest, ok := strings.CutPrefix(d.clientID, "iotdevice-")
	code, ok2 := strings.CutSuffix(rest, "-"+d.key)
	if !ok || !ok2 || code == "" {
		return nil, fmt.Errorf("devicesim: client id %q is not iotdevice-<model>-<key>", d.clientID)
	}
	d.modelCode = code
	d.app = appState{version: f.cfg.FirmwareVersion, idf: simIDFVersion, partition: "ota_0"}
	d.seen = []string{d.current}
	if prov["client_secret_next"] != "" {
		d.next = prov["client_secret_next"]
		d.seen = append(d.seen, d.next)
	}
	return d, nil
}

// ClientID is the device's Keycloak client id.
func (d *Device) ClientID() string { return d.clientID }

// Key is the device key.
func (d *Device) Key() string { return d.key }

// ModelCode is the code of the device's model.
func (d *Device) ModelCode() string { return d.modelCode }

// BaseURL is espmdm's URL from the partition.
func (d *Device) BaseURL() string { return d.baseURL }

// MQTTURL is the broker URL from the partition (the fleet's shared
// connection uses Config.BrokerURL).
func (d *Device) MQTTURL() string { return d.mqttURL }

// SetBehaviour changes how the device acts from its next action on.
func (d *Device) SetBehaviour(b Behaviour) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if b.Crash != d.beh.Crash {
		d.crashed = false
	}
	d.beh = b
}

// Behaviour returns how the device acts.
func (d *Device) Behaviour() Behaviour {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.beh
}

// Secrets returns every secret the device has held or been handed, for a
// test that checks logs for leaks. Never print them.
func (d *Device) Secrets() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.seen...)
}

// Config returns the config the device fetched last (nil before any).
func (d *Device) Config() json.RawMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append(json.RawMessage(nil), d.config...)
}

// Firmware returns the firmware image the device holds (possibly partial:
// complete says) and its ETag.
func (d *Device) Firmware() (image []byte, etag string, complete bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]byte(nil), d.fw.data...), d.fw.etag, d.fw.complete
}

// --- events from the fleet ---

func (d *Device) offline() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.beh.Offline
}

func (d *Device) onNudge() {
	d.mu.Lock()
	if d.beh.Offline {
		d.stats.Ignored++
		d.mu.Unlock()
		return
	}
	d.stats.Nudges++
	if d.nudgeAt.IsZero() {
		d.nudgeAt = time.Now()
	}
	queued := d.rotationQueued
	d.rotationQueued = true
	d.mu.Unlock()
	d.event(EventNudge, nil)
	if queued {
		return // one rotation job answers every nudge received before it starts
	}
	d.f.enqueue(func(ctx context.Context) {
		d.mu.Lock()
		d.rotationQueued = false
		d.mu.Unlock()
		if err := d.Rotate(ctx); err != nil && !errors.Is(err, ErrCrashed) && ctx.Err() == nil {
			d.fail("rotate", err)
		}
	})
}

func (d *Device) onConfigNotice() {
	d.mu.Lock()
	if d.beh.Offline {
		d.stats.Ignored++
		d.mu.Unlock()
		return
	}
	d.stats.ConfigNotices++
	queued := d.configQueued
	d.configQueued = true
	d.mu.Unlock()
	d.event(EventConfigNotice, nil)
	if queued {
		return
	}
	d.f.enqueue(func(ctx context.Context) {
		d.mu.Lock()
		d.configQueued = false
		d.mu.Unlock()
		if _, err := d.FetchConfig(ctx); err != nil && ctx.Err() == nil {
			d.fail("fetch config", err)
		}
	})
}

// onFirmwareNotice is a message on the model's firmware topic (own false)
// or on the device's own (a campaign's nudge, own true).
func (d *Device) onFirmwareNotice(version string, own bool) {
	d.mu.Lock()
	if d.beh.Offline {
		d.stats.Ignored++
		d.mu.Unlock()
		return
	}
	d.stats.FirmwareNotices++
	if own {
		d.stats.DeviceFirmwareNotices++
	}
	d.stats.NotifiedFirmwareVersion = version
	d.mu.Unlock()
	d.event(EventFirmwareNotice, nil)
	if d.f.cfg.FollowFirmware {
		d.queueUpdate()
	}
}

// queueUpdate has a worker run Update; one queued update answers every
// notice received before it starts.
func (d *Device) queueUpdate() {
	d.mu.Lock()
	queued := d.updateQueued
	d.updateQueued = true
	d.mu.Unlock()
	if queued {
		return
	}
	d.f.enqueue(func(ctx context.Context) {
		d.mu.Lock()
		d.updateQueued = false
		d.mu.Unlock()
		if _, err := d.Update(ctx); err != nil && !errors.Is(err, ErrOffline) && ctx.Err() == nil {
			d.fail("update firmware", err)
		}
	})
}

func (d *Device) fail(op string, err error) {
	d.mu.Lock()
	d.stats.Errors++
	d.stats.LastError = op + ": " + err.Error()
	d.mu.Unlock()
	d.event(EventError, fmt.Errorf("%s: %w", op, err))
	d.f.logf("devicesim: %s: %s: %v", d.clientID, op, err)
}

func (d *Device) event(k EventKind, err error) {
	d.f.emit(Event{At: time.Now(), ClientID: d.clientID, Kind: k, Err: err})
}

// pause waits the Slow delay before a step.
func (d *Device) pause(ctx context.Context) error {
	d.mu.Lock()
	slow := d.beh.Slow
	d.mu.Unlock()
	if slow <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(slow)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// --- tokens and the lockout meter ---

// grant is one client-credentials request. A refused secret is ErrRefused;
// errors never hold the secret or the token.
func (d *Device) grant(ctx context.Context, secret string) (cachedToken, error) {
	d.mu.Lock()
	d.stats.TokenRequests++
	d.mu.Unlock()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {d.clientID}, "client_secret": {secret}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return cachedToken{}, fmt.Errorf("devicesim: token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := d.f.http.Do(req)
	if err != nil {
		return cachedToken{}, fmt.Errorf("devicesim: token request: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return cachedToken{}, fmt.Errorf("devicesim: token answer: %w", err)
	}
	var ans struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		Error       string `json:"error"`
	}
	_ = json.Unmarshal(body, &ans)
	switch {
	case resp.StatusCode == http.StatusOK && ans.AccessToken != "":
		exp := time.Now().Add(time.Duration(ans.ExpiresIn) * time.Second)
		return cachedToken{value: ans.AccessToken, expires: exp}, nil
	case resp.StatusCode == http.StatusUnauthorized,
		resp.StatusCode == http.StatusBadRequest && (ans.Error == "invalid_client" || ans.Error == "unauthorized_client"):
		d.mu.Lock()
		d.stats.TokenRefusals++
		d.mu.Unlock()
		return cachedToken{}, ErrRefused
	default:
		return cachedToken{}, &StatusError{Op: "POST token", Status: resp.StatusCode}
	}
}

// token returns the cached token, or logs in with current, then next.
func (d *Device) token(ctx context.Context) (string, error) {
	d.mu.Lock()
	if d.tok.value != "" && time.Until(d.tok.expires) > d.f.cfg.TokenSlack {
		v := d.tok.value
		d.mu.Unlock()
		return v, nil
	}
	d.mu.Unlock()
	return d.login(ctx)
}

// login gets a token with the persisted secrets, current first, and runs
// the lockout meter: refused all round begins a lockout, a success ends it.
// When only the next secret is accepted it is promoted at once (current :=
// next, next erased) and acked, as the README's firmware steps say: it is
// the only secret that works, and a later rotation must not overwrite it.
func (d *Device) login(ctx context.Context) (string, error) {
	d.mu.Lock()
	slots := []string{d.current, d.next}
	d.mu.Unlock()
	var other error
	for i, s := range slots {
		if s == "" {
			continue
		}
		tok, err := d.grant(ctx, s)
		if err == nil {
			d.mu.Lock()
			d.tok = tok
			promote := i == 1 && d.next == s
			if promote {
				d.current, d.next = s, ""
				d.stats.Persists++
				d.stats.Promotions++
			}
			d.mu.Unlock()
			d.endLockout()
			if promote {
				d.ackPromoted(ctx, tok, s)
			}
			return tok.value, nil
		}
		if !errors.Is(err, ErrRefused) {
			other = err
		}
	}
	if other != nil {
		return "", other // not known to be a lockout
	}
	d.beginLockout()
	return "", fmt.Errorf("%w (%s)", ErrLockedOut, d.clientID)
}

// ackPromoted acks a secret promoted at login. 204 confirms the rotation
// (or confirmed it before); 409 says it is not the current rotation's
// secret: the promotion stands either way, since Keycloak accepted it.
func (d *Device) ackPromoted(ctx context.Context, tok cachedToken, secret string) {
	code, err := d.ack(ctx, tok, secret)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			d.f.logf("devicesim: %s: ack of the promoted secret: %v", d.clientID, err)
		}
	case code == http.StatusNoContent:
		d.mu.Lock()
		d.stats.Acks++
		d.confirmed()
		d.mu.Unlock()
		d.event(EventAck, nil)
	}
}

// ack is POST /iot/provisioning/ack of secret's SHA-256 with tok; it
// returns the status.
func (d *Device) ack(ctx context.Context, tok cachedToken, secret string) (int, error) {
	body, _ := json.Marshal(map[string]string{"client_secret_sha256": sha256Hex([]byte(secret))})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.baseURL+"/iot/provisioning/ack", bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("devicesim: ack: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok.value)
	resp, err := d.f.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("devicesim: POST /iot/provisioning/ack: %w", stripURL(err))
	}
	drain(resp)
	return resp.StatusCode, nil
}

func (d *Device) beginLockout() {
	d.mu.Lock()
	begins := d.lockStart.IsZero()
	if begins {
		d.lockStart = time.Now()
		d.stats.Lockouts++
	}
	if d.retry == nil && !d.stopped {
		d.retry = time.AfterFunc(d.f.cfg.LockoutRetry, d.retryLogin)
	}
	d.mu.Unlock()
	if begins {
		d.event(EventLockoutBegin, nil)
	}
}

func (d *Device) endLockout() {
	d.mu.Lock()
	ended := !d.lockStart.IsZero()
	if ended {
		d.stats.LockedOut += time.Since(d.lockStart)
		d.lockStart = time.Time{}
	}
	d.mu.Unlock()
	if ended {
		d.event(EventLockoutEnd, nil)
	}
}

// retryLogin is the locked-out device trying its secrets again.
func (d *Device) retryLogin() {
	d.f.enqueue(func(ctx context.Context) {
		d.mu.Lock()
		d.retry = nil
		locked := !d.lockStart.IsZero()
		d.mu.Unlock()
		if locked {
			_, _ = d.login(ctx)
		}
	})
}

func (d *Device) stopRetry() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	if d.retry != nil {
		d.retry.Stop()
		d.retry = nil
	}
}

// Boot is the device's power-on: it forgets its in-memory state, gets a
// token with its current secret, then its next one, and reports its state
// (SPEC §15; an image booted from an OTA is then confirmed and reported
// again).
// With Config.FollowFirmware it then checks its firmware, as the component
// does at every start (queued on the fleet's workers: see Update).
func (d *Device) Boot(ctx context.Context) error {
	if err := d.boot(ctx, "poweron"); err != nil {
		return err
	}
	if d.f.cfg.FollowFirmware {
		d.queueUpdate()
	}
	return nil
}

// boot is Boot for a start whose reset reason is reason, without the
// firmware check (a reboot into an image just installed needs none).
func (d *Device) boot(ctx context.Context, reason string) error {
	d.mu.Lock()
	d.tok = cachedToken{}
	d.config = nil
	d.stats.Boots++
	d.app.reset, d.app.bootAt = reason, time.Now()
	d.mu.Unlock()
	d.event(EventBoot, nil)
	if _, err := d.login(ctx); err != nil {
		return err
	}
	return d.reportBoot(ctx)
}

// crash loses everything but the persisted slots, then reboots (unless
// Behaviour.StayDown keeps it off): a token with what it persisted (when
// only the next secret works, it is promoted and acked), then its config,
// as firmware starts (espmdm takes that request of a device that fetched
// without confirming as the reboot, and nudges it again).
func (d *Device) crash(ctx context.Context) error {
	d.mu.Lock()
	d.stats.Crashes++
	d.crashed = true
	down, delay := d.beh.StayDown, d.beh.RebootDelay
	if down {
		d.beh.Offline = true
		d.tok = cachedToken{}
	}
	d.mu.Unlock()
	d.event(EventCrash, nil)
	if down {
		return ErrCrashed
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ErrCrashed
		}
	}
	if err := d.boot(ctx, "panic"); err != nil {
		if ctx.Err() == nil {
			d.f.logf("devicesim: %s: boot after crash: %v", d.clientID, err)
		}
		return ErrCrashed
	}
	if _, err := d.FetchConfig(ctx); err != nil && ctx.Err() == nil {
		d.f.logf("devicesim: %s: config after the reboot: %v", d.clientID, err)
	}
	if d.f.cfg.FollowFirmware {
		d.queueUpdate()
	}
	return ErrCrashed
}

func (d *Device) crashesAt(p CrashPoint) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.beh.Crash == p && (d.beh.CrashAlways || !d.crashed)
}

// --- the device API ---

// do calls espmdm with the device's token; a 401 drops the cached token
// and the call is tried once more with a fresh one. The caller closes the
// body.
func (d *Device) do(ctx context.Context, method, path string, body []byte, hdr http.Header) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		tok, err := d.token(ctx)
		if err != nil {
			return nil, err
		}
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, d.baseURL+path, rd)
		if err != nil {
			return nil, fmt.Errorf("devicesim: %s %s: %w", method, path, err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := d.f.http.Do(req)
		if err != nil {
			return nil, fmt.Errorf("devicesim: %s %s: %w", method, path, stripURL(err))
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			drain(resp)
			d.mu.Lock()
			if d.tok.value == tok {
				d.tok = cachedToken{}
			}
			d.mu.Unlock()
			continue
		}
		return resp, nil
	}
}

// stripURL keeps the URL out of a transport error (it holds no secret, but
// keeps messages short and stable).
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}

// getJSON calls espmdm and decodes a 200 answer into out.
func (d *Device) getJSON(ctx context.Context, path string, out any) error {
	resp, err := d.do(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusOK {
		return &StatusError{Op: "GET " + path, Status: resp.StatusCode}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("devicesim: GET %s: decode: %w", path, err)
	}
	return nil
}

// FetchConfig is GET /iot/config; the device keeps the answer (Config).
func (d *Device) FetchConfig(ctx context.Context) (json.RawMessage, error) {
	if d.offline() {
		return nil, ErrOffline
	}
	if err := d.pause(ctx); err != nil {
		return nil, err
	}
	var cfg json.RawMessage
	if err := d.getJSON(ctx, "/iot/config", &cfg); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.config = cfg
	d.stats.ConfigFetches++
	d.mu.Unlock()
	d.event(EventConfigFetch, nil)
	return append(json.RawMessage(nil), cfg...), nil
}

// FirmwareVersion is GET /iot/firmware-version.
func (d *Device) FirmwareVersion(ctx context.Context) (string, error) {
	if d.offline() {
		return "", ErrOffline
	}
	var v struct {
		FirmwareVersion *string `json:"firmware_version"`
	}
	if err := d.getJSON(ctx, "/iot/firmware-version", &v); err != nil {
		return "", err
	}
	if v.FirmwareVersion == nil {
		return "", nil
	}
	return *v.FirmwareVersion, nil
}

// FirmwareResult is what one FetchFirmware did.
type FirmwareResult struct {
	Status      int    // HTTP status: 200, 206 or 304
	NotModified bool   // 304: the device already holds this image (If-None-Match)
	Resumed     bool   // 206: a Range request continued a cut download
	Interrupted bool   // the download was cut (Behaviour.InterruptFirmwareAfter)
	Received    int64  // bytes received by this call
	Size        int64  // bytes the device now holds
	Complete    bool   // the device holds the whole image
	ETag        string // the image's ETag
	SHA256      string // hex SHA-256 of the held image, when complete
}

// FetchFirmware is GET /iot/firmware as resumable OTA does it: with the
// held image's ETag as If-None-Match (304 when current), or, after a cut
// download, a Range request for the rest guarded by If-Range.
func (d *Device) FetchFirmware(ctx context.Context) (FirmwareResult, error) {
	if d.offline() {
		return FirmwareResult{}, ErrOffline
	}
	if err := d.pause(ctx); err != nil {
		return FirmwareResult{}, err
	}
	d.mu.Lock()
	fw := d.fw
	cutAfter := d.beh.InterruptFirmwareAfter
	if fw.cut {
		cutAfter = 0
	}
	d.mu.Unlock()
	hdr := http.Header{}
	resuming := false
	switch {
	case fw.complete && fw.etag != "":
		hdr.Set("If-None-Match", fw.etag)
	case len(fw.data) > 0 && fw.etag != "":
		hdr.Set("Range", fmt.Sprintf("bytes=%d-", len(fw.data)))
		hdr.Set("If-Range", fw.etag)
		resuming = true
	}
	resp, err := d.do(ctx, http.MethodGet, "/iot/firmware", nil, hdr)
	if err != nil {
		return FirmwareResult{}, err
	}
	defer drain(resp)
	res := FirmwareResult{Status: resp.StatusCode, ETag: resp.Header.Get("ETag")}
	var base []byte
	var total int64
	switch resp.StatusCode {
	case http.StatusNotModified:
		res.NotModified, res.ETag = true, fw.etag
		res.Size, res.Complete = int64(len(fw.data)), true
		res.SHA256 = sha256Hex(fw.data)
		d.mu.Lock()
		d.stats.FirmwareNotModified++
		d.mu.Unlock()
		return res, nil
	case http.StatusOK:
		total = resp.ContentLength
	case http.StatusPartialContent:
		if !resuming {
			return res, &StatusError{Op: "GET /iot/firmware (unasked range)", Status: resp.StatusCode}
		}
		first, size, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || first != int64(len(fw.data)) {
			return res, fmt.Errorf("devicesim: GET /iot/firmware: unexpected Content-Range %q", resp.Header.Get("Content-Range"))
		}
		base, total, res.Resumed = fw.data, size, true
		if res.ETag == "" {
			res.ETag = fw.etag
		}
	default:
		return res, &StatusError{Op: "GET /iot/firmware", Status: resp.StatusCode}
	}
	var r io.Reader = resp.Body
	if cutAfter > 0 {
		r = io.LimitReader(resp.Body, cutAfter)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		return res, fmt.Errorf("devicesim: GET /iot/firmware: body: %w", err)
	}
	data := append(append([]byte(nil), base...), got...)
	res.Received, res.Size = int64(len(got)), int64(len(data))
	if total < 0 { // no length: whole unless the cut stopped the read
		res.Complete = cutAfter == 0 || int64(len(got)) < cutAfter
	} else {
		res.Complete = int64(len(data)) == total
	}
	res.Interrupted = !res.Complete && cutAfter > 0
	if res.Complete {
		res.SHA256 = sha256Hex(data)
	}
	d.mu.Lock()
	d.fw = firmwareState{data: data, etag: res.ETag, total: total, complete: res.Complete, cut: fw.cut || res.Interrupted}
	d.stats.FirmwareDownloads++
	d.mu.Unlock()
	return res, nil
}

func parseContentRange(v string) (first, size int64, ok bool) {
	v, ok = strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, false
	}
	rng, sz, ok := strings.Cut(v, "/")
	if !ok {
		return 0, 0, false
	}
	a, _, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, false
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	size, err2 := strconv.ParseInt(sz, 10, 64)
	return first, size, err1 == nil && err2 == nil
}

// --- rotation ---

// provisioningAnswer is GET /iot/provisioning's answer (the NVS names).
type provisioningAnswer struct {
	DeviceKey    string `json:"device_key"`
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret"`
	MQTTPassword string `json:"mqtt_password"`
}

// Rotate is what the device does on the nudge. Following the protocol:
// fetch GET /iot/provisioning, persist the secret to the next slot, get a
// token with it, POST /iot/provisioning/ack, promote next to current on
// 204; on 409 (the secret is no longer the rotation's) or a refused token,
// erase next and keep current. With Behaviour.Legacy: fetch, overwrite
// current, reboot, token, GET /iot/config. A fetch that returns the current
// secret (no rotation under way) changes nothing. A simulated crash returns
// ErrCrashed after the reboot. Rotations of one device never overlap.
func (d *Device) Rotate(ctx context.Context) error {
	if d.offline() {
		return ErrOffline
	}
	d.rotMu.Lock()
	defer d.rotMu.Unlock()
	if d.Behaviour().Legacy {
		return d.rotateLegacy(ctx)
	}
	newSecret, err := d.fetch(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	unchanged := newSecret == d.current
	d.mu.Unlock()
	if unchanged {
		return nil
	}
	if d.crashesAt(CrashAfterFetch) {
		return d.crash(ctx)
	}
	if err := d.pause(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.next = newSecret
	d.stats.Persists++
	d.mu.Unlock()
	if d.crashesAt(CrashAfterPersist) {
		return d.crash(ctx)
	}
	if err := d.pause(ctx); err != nil {
		return err
	}
	tok, err := d.grant(ctx, newSecret)
	if errors.Is(err, ErrRefused) {
		d.eraseNext(newSecret)
	}
	if err != nil {
		return fmt.Errorf("token with the fetched secret: %w", err)
	}
	if err := d.pause(ctx); err != nil {
		return err
	}
	code, err := d.ack(ctx, tok, newSecret)
	if err != nil {
		return err
	}
	if code == http.StatusConflict {
		d.eraseNext(newSecret)
	}
	if code != http.StatusNoContent {
		return &StatusError{Op: "POST /iot/provisioning/ack", Status: code}
	}
	d.mu.Lock()
	d.current, d.next = newSecret, ""
	d.tok = tok
	d.stats.Acks++
	d.confirmed()
	d.mu.Unlock()
	d.event(EventAck, nil)
	return nil
}

// eraseNext erases the next slot if it still holds secret: it is not (or
// no longer) the rotation's, and the current one is kept.
func (d *Device) eraseNext(secret string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.next == secret {
		d.next = ""
		d.stats.Persists++
	}
}

// confirmed records the confirm latency; d.mu is held.
func (d *Device) confirmed() {
	if !d.nudgeAt.IsZero() {
		d.stats.ConfirmLatencies = append(d.stats.ConfirmLatencies, time.Since(d.nudgeAt))
		d.nudgeAt = time.Time{}
	}
}

// fetch is GET /iot/provisioning; it returns the secret handed out.
func (d *Device) fetch(ctx context.Context) (string, error) {
	if err := d.pause(ctx); err != nil {
		return "", err
	}
	var p provisioningAnswer
	if err := d.getJSON(ctx, "/iot/provisioning", &p); err != nil {
		return "", err
	}
	if p.ClientID != d.clientID || p.DeviceKey != d.key || p.ClientSecret == "" {
		return "", fmt.Errorf("devicesim: GET /iot/provisioning answered for another device or without a secret")
	}
	d.mu.Lock()
	if p.MQTTPassword != "" {
		d.mqttPassword = p.MQTTPassword // used from the next connection on
	}
	d.stats.Fetches++
	if !containsString(d.seen, p.ClientSecret) {
		d.seen = append(d.seen, p.ClientSecret)
		d.stats.SecretsFetched++
	}
	d.mu.Unlock()
	d.event(EventFetch, nil)
	return p.ClientSecret, nil
}

func (d *Device) rotateLegacy(ctx context.Context) error {
	newSecret, err := d.fetch(ctx)
	if err != nil {
		return err
	}
	fetched := time.Now()
	if err := d.pause(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.current, d.next = newSecret, "" // one slot, overwritten
	d.stats.Persists++
	d.mu.Unlock()
	// The reboot, lasting into a later second than the generation, so the
	// token's iat proves the new secret.
	wait := time.Until(fetched.Truncate(time.Second).Add(time.Second + 50*time.Millisecond))
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
	if err := d.Boot(ctx); err != nil {
		return err
	}
	if _, err := d.FetchConfig(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.confirmed()
	d.mu.Unlock()
	return nil
}

// --- checks ---

// Verdict is Keycloak's answer to one secret.
type Verdict int

const (
	// NotHeld means the device holds no secret there.
	NotHeld Verdict = iota
	// Accepted means Keycloak issues a token for the secret.
	Accepted
	// Refused means Keycloak refuses the secret.
	Refused
)

func (v Verdict) String() string {
	return [...]string{"not-held", "accepted", "refused"}[v]
}

// SecretCheck is Keycloak's verdict on each secret the device knows.
type SecretCheck struct {
	// Provisioned is the secret of the partition the device booted from
	// (what an offline device still holds; refused after a rotation).
	Provisioned Verdict
	// Current and Next are the persisted slots.
	Current, Next Verdict
}

// CheckSecrets asks Keycloak about each secret the device knows, without
// touching its token or its lockout meter.
func (d *Device) CheckSecrets(ctx context.Context) (SecretCheck, error) {
	d.mu.Lock()
	prov, cur, next := d.provisioned, d.current, d.next
	d.mu.Unlock()
	var out SecretCheck
	for _, c := range []struct {
		secret string
		v      *Verdict
	}{{prov, &out.Provisioned}, {cur, &out.Current}, {next, &out.Next}} {
		if c.secret == "" {
			continue
		}
		_, err := d.grant(ctx, c.secret)
		switch {
		case err == nil:
			*c.v = Accepted
		case errors.Is(err, ErrRefused):
			*c.v = Refused
		default:
			return out, err
		}
	}
	return out, nil
}

// check reports whether a persisted secret works, feeding the meter.
func (d *Device) check(ctx context.Context) (ok bool, err error) {
	d.mu.Lock()
	slots := []string{d.current, d.next}
	d.mu.Unlock()
	for _, s := range slots {
		if s == "" {
			continue
		}
		_, err := d.grant(ctx, s)
		if err == nil {
			d.endLockout()
			return true, nil
		}
		if !errors.Is(err, ErrRefused) {
			return false, err
		}
	}
	d.beginLockout()
	return false, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
