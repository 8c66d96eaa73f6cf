package integration_test

import (
	"bytes"
	"database/sql"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/espmdm/espmdm/adapters/secretbox"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
)

// sealedSecret reads a device's previous_secret column as stored.
func sealedSecret(t *testing.T, dsn string, id int64) []byte {
	t.Helper()
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	defer db.Close()
	var raw []byte
	if err := db.QueryRowContext(ctxT(t, 10*time.Second), `SELECT previous_secret FROM devices WHERE id = $1`, id).Scan(&raw); err != nil {
		t.Fatalf("read previous_secret: %v", err)
	}
	return raw
}

func waitState(t *testing.T, s *server, id int64, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := deviceState(t, s, id).RotationState
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %d is %s after %s, want %s", id, got, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestE2ESecretKeyChangeKeepsInFlightRotations: a rotation is in flight
// (restore mode: the device fetched its new secret, the old one is sealed in
// the row under SECRET_KEY) when the key is changed. The sealed column holds
// ciphertext, not the secret. Restarted with only the new key, espmdm
// cannot open it and leaves the rotation in flight (nothing is lost or
// half-done); restarted with SECRET_KEY_PREVIOUS set to the old key, it
// times the attempt out and restores the old secret in Keycloak.
func TestE2ESecretKeyChangeKeepsInFlightRotations(t *testing.T) {
	oldKey, newKey := randHex(32), randHex(32)
	env := func(key, previous, timeout, dsn string) map[string]string {
		e := rotationEnv("restore", 1)
		e["SECRET_KEY"], e["SECRET_KEY_PREVIOUS"], e["ROTATION_TIMEOUT_SECONDS"], e["DATABASE_URL"] = key, previous, timeout, dsn
		return e
	}
	s1 := startServer(t, env(oldKey, "", "3600", ""))
	s1.keep(oldKey, newKey)
	dsn := s1.cfg.DatabaseURL
	m := newModel(t, s1, nil)
	d := newSimDevices(t, s1, m.ID, follows)[0]
	tok := d.deviceToken(t, s1)
	s1.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s1.admin, nil).want(t, http.StatusAccepted, nil)
	waitState(t, s1, d.ID, "PENDING", 30*time.Second)
	var p provisioningDTO
	s1.do(http.MethodGet, "/iot/provisioning", tok, nil).want(t, http.StatusOK, &p)
	s1.keep(p.ClientSecret)
	if p.ClientSecret == d.current || accepted(t, s1.st, d.ClientID, d.current) {
		t.Fatalf("restore mode: the fetch did not replace the secret")
	}

	raw := sealedSecret(t, dsn, d.ID)
	if len(raw) == 0 || bytes.Contains(raw, []byte(d.current)) {
		t.Fatalf("previous_secret holds %d bytes containing the plaintext secret", len(raw))
	}
	if raw[0] != 0x01 || len(raw) != 1+12+len(d.current)+16 {
		t.Errorf("previous_secret is %d bytes starting %#x, want version 1 | nonce | ciphertext | tag (%d bytes)",
			len(raw), raw[0], 1+12+len(d.current)+16)
	}
	oldBox, err := secretbox.NewFromString(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	newBox, err := secretbox.NewFromString(newKey)
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := oldBox.Open(raw); err != nil || string(plain) != d.current {
		t.Errorf("previous_secret does not open under SECRET_KEY to the old secret: %v", err)
	}
	if _, err := newBox.Open(raw); err == nil {
		t.Errorf("previous_secret opens under another key")
	}
	s1.stop()

	// Only the new key: the sealed secret cannot be opened. The attempt
	// is not timed out half-way: it stays PENDING, and the device keeps
	// the new secret it holds.
	s2 := startServer(t, env(newKey, "", "1", dsn))
	s2.keep(oldKey, newKey, p.ClientSecret)
	time.Sleep(4 * time.Second) // several ticks past the 1 s timeout
	if st := deviceState(t, s2, d.ID).RotationState; st != "PENDING" {
		t.Fatalf("with the old key missing the rotation went %s, want it kept PENDING", st)
	}
	if !accepted(t, s2.st, d.ClientID, p.ClientSecret) {
		t.Fatalf("with the old key missing the device's new secret stopped working")
	}
	hinted := false
	for _, e := range s2.logs.All() {
		hinted = hinted || strings.Contains(e.Message+fmt.Sprint(e.ContextMap()), "SECRET_KEY_PREVIOUS")
	}
	if !hinted {
		t.Errorf("no log line says that SECRET_KEY_PREVIOUS may be missing")
	}
	s2.stop()

	// The new key and the old one as SECRET_KEY_PREVIOUS: the attempt
	// times out and the old secret is restored.
	s3 := startServer(t, env(newKey, oldKey, "1", dsn))
	s3.keep(oldKey, newKey, p.ClientSecret)
	waitState(t, s3, d.ID, "TIMEOUT", 30*time.Second)
	if !accepted(t, s3.st, d.ClientID, d.current) {
		t.Errorf("after the key change the old secret was not restored")
	}
	if accepted(t, s3.st, d.ClientID, p.ClientSecret) {
		t.Errorf("the unconfirmed new secret still works after the restore")
	}
	// Nothing sealed under the old key is left: SECRET_KEY_PREVIOUS may go
	// once no device is PENDING or TIMEOUT.
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	defer db.Close()
	var left int
	if err := db.QueryRowContext(ctxT(t, 10*time.Second), `SELECT count(*) FROM devices WHERE previous_secret IS NOT NULL`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d sealed secrets left after the restore", left)
	}
}

// TestE2ESecretsNeverLogged runs a whole device life — model, firmware,
// device, provisioning data in every form, device API calls, a rotation
// with its fetch and ack, refusals, deletion — against an espmdm process
// logging JSON at debug level, and fails if anything secret it handled
// appears in its output: a client secret (old or new), an access token or
// its signature, the Wi-Fi password, SECRET_KEY, the broker or database
// password, or a piece of the provisioning partition.
func TestE2ESecretsNeverLogged(t *testing.T) {
	st := integration.Shared(t)
	// espmdm's own broker account, as the stack gives it (MQTT_URL).
	brokerPassword := st.MQTTAdminPassword
	env := rotationEnv("grace", 2)
	env["MQTT_URL"] = st.MQTTAdminURL()
	env["UNAUTH_RATE_LIMIT"] = "0"
	s, _ := startProcess(t, env)
	s.keep(brokerPassword)
	handled := []string{brokerPassword, s.admin, s.viewer}
	if u, err := url.Parse(s.cfg.DatabaseURL); err == nil {
		if pw, ok := u.User.Password(); ok {
			handled = append(handled, pw)
		}
	}

	m := newModel(t, s, map[string]any{"type": "object"})
	up := fmt.Sprintf("/api/device-models/%d/firmware", m.ID)
	s.request(http.MethodPost, up, s.admin, bytes.NewReader(firmwareImage(esp32image.ChipESP32, "1.2.3")),
		"Content-Type", "application/octet-stream").want(t, http.StatusCreated, nil)
	d := newSimDevices(t, s, m.ID, follows)[0]
	prov := fmt.Sprintf("/api/devices/%d/provisioning", d.ID)
	var img struct {
		Data string `json:"data"`
	}
	s.do(http.MethodGet, prov, s.admin, nil).want(t, http.StatusOK, &img)
	s.request(http.MethodGet, prov+"?format=bin", s.admin, nil).want(t, http.StatusOK, nil)
	var fields provisioningDTO
	s.do(http.MethodGet, prov+"?format=json", s.admin, nil).want(t, http.StatusOK, &fields)
	handled = append(handled, d.current, fields.WiFiPassword, img.Data[len(img.Data)/3:len(img.Data)/3+64])

	tok := d.deviceToken(t, s)
	for _, path := range []string{"/iot/config", "/iot/firmware-version", "/iot/firmware", "/iot/provisioning"} {
		s.request(http.MethodGet, path, tok, nil).want(t, http.StatusOK, nil)
	}
	// Tokens and secrets where they do not belong: refused, and not logged.
	s.request(http.MethodGet, "/iot/config?access_token="+tok, "", nil).wantProblem(t, http.StatusUnauthorized)
	s.request(http.MethodGet, "/iot/config", "", nil, "Authorization", "Basic "+
		base64.StdEncoding.EncodeToString([]byte(d.ClientID+":"+d.current))).wantProblem(t, http.StatusUnauthorized)
	s.request(http.MethodGet, "/iot/config", tok+"x", nil).wantProblem(t, http.StatusUnauthorized)
	s.request(http.MethodGet, "/api/devices", tok, nil).wantProblem(t, http.StatusUnauthorized)
	s.do(http.MethodPost, "/iot/provisioning/ack", tok, map[string]string{"client_secret_sha256": sha256Hex(d.current)}).
		wantProblem(t, http.StatusConflict)

	// A rotation: nudge, fetch, token with the new secret, ack.
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", d.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
	waitState(t, s, d.ID, "PENDING", 30*time.Second)
	d.act(t, s, "the one attempt")
	waitState(t, s, d.ID, "OK", 30*time.Second)
	newTok := d.deviceToken(t, s)
	s.request(http.MethodGet, "/iot/config", newTok, nil).want(t, http.StatusOK, nil)
	handled = append(handled, d.current, tok, newTok)
	handled = append(handled, d.fetched...)
	s.request(http.MethodDelete, fmt.Sprintf("/api/devices/%d", d.ID), s.admin, nil).want(t, http.StatusNoContent, nil)
	time.Sleep(300 * time.Millisecond) // the last lines reach the pipe

	out := s.out.String()
	if n := strings.Count(out, `"msg":"http request"`); n < 20 {
		t.Fatalf("only %d request log lines captured: the check would prove nothing", n)
	}
	if !strings.Contains(out, `"level":"debug"`) || !strings.Contains(out, "rotation") {
		t.Fatalf("the output lacks debug and rotation lines: the check would prove nothing")
	}
	s.mu.Lock()
	handled = append(handled, s.secrets...) // everything startServer and the helpers kept
	s.mu.Unlock()
	checked := 0
	for _, secret := range handled {
		if len(secret) < 8 {
			continue
		}
		forms := []string{secret, base64.StdEncoding.EncodeToString([]byte(secret)), base64.RawURLEncoding.EncodeToString([]byte(secret))}
		if parts := strings.Split(secret, "."); len(parts) == 3 {
			forms = append(forms, parts[2]) // a JWT's signature alone
		}
		for _, f := range forms {
			checked++
			if strings.Contains(out, f) {
				t.Errorf("a secret (%d chars, starting %.4s…) appears in espmdm's output", len(f), f)
			}
		}
	}
	t.Logf("%d secret values and encodings checked against %d bytes (%d lines) of JSON logs",
		checked, len(out), strings.Count(out, "\n"))
}
