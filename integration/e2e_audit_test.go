package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/esp32image"
)

type auditEntryDTO struct {
	ID    int64  `json:"id"`
	At    string `json:"at"`
	Kind  string `json:"kind"`
	Actor struct {
		Type     string `json:"type"`
		Subject  string `json:"subject"`
		ClientID string `json:"client_id"`
		Name     string `json:"name"`
	} `json:"actor"`
	DeviceID *int64  `json:"device_id"`
	ClientID *string `json:"client_id"`
	Outcome  string  `json:"outcome"`
	Detail   string  `json:"detail"`
}

// auditLog pages through GET /api/audit?query with pages of limit and
// returns every entry and the raw bodies.
func auditLog(t *testing.T, s *server, query string, limit int) ([]auditEntryDTO, []byte) {
	t.Helper()
	var all []auditEntryDTO
	var raw []byte
	cursor := ""
	for range 1000 {
		q := fmt.Sprintf("/api/audit?limit=%d&%s", limit, query)
		if cursor != "" {
			q += "&cursor=" + cursor
		}
		var page struct {
			Entries    []auditEntryDTO `json:"entries"`
			NextCursor *string         `json:"next_cursor"`
		}
		r := s.do(http.MethodGet, q, s.viewer, nil).want(t, http.StatusOK, &page)
		raw = append(raw, r.body...)
		all = append(all, page.Entries...)
		if page.NextCursor == nil {
			return all, raw
		}
		cursor = *page.NextCursor
	}
	t.Fatal("the audit log never reached its last page")
	return nil, nil
}

// TestE2EAudit runs a device's whole life, a grace rotation included, on a
// real espmdm and reads it back from GET /api/audit: every event with its
// actor, and no secret or token the scenario handled in any entry, neither
// in the API's answers nor in the table itself.
func TestE2EAudit(t *testing.T) {
	s := startServer(t, rotationEnv("grace", 2))
	m := newModel(t, s, nil)
	fwPath := fmt.Sprintf("/api/device-models/%d/firmware", m.ID)
	s.request(http.MethodPost, fwPath, s.admin, bytes.NewReader(firmwareImage(esp32image.ChipESP32, "2.0.0")),
		"Content-Type", "application/octet-stream").want(t, http.StatusCreated, nil)
	devs := newSimDevices(t, s, m.ID, follows, fetchQuiet) // each downloads its provisioning data
	f, quiet := devs[0], devs[1]
	s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/provisioning?format=bin", f.ID), s.admin, nil).want(t, http.StatusOK, nil)
	s.do(http.MethodPost, "/api/rotation/trigger", s.admin, nil).want(t, http.StatusAccepted, nil)
	rotationRun(t, s, m.ID, devs, 90*time.Second, func() bool {
		return !f.done.IsZero() && len(quiet.attempts) >= 2
	})
	// A wrong ack is refused, and audited as such.
	s.do(http.MethodPost, "/iot/provisioning/ack", f.deviceToken(t, s), map[string]string{"client_secret_sha256": strings.Repeat("ab", 32)}).
		wantProblem(t, http.StatusConflict)
	s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/identity/sync", f.ID), s.admin, nil).want(t, http.StatusOK, nil)
	s.do(http.MethodPut, fmt.Sprintf("/api/devices/%d", quiet.ID), s.admin, `{"active":false}`).want(t, http.StatusOK, nil)
	s.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", quiet.ID), s.admin, nil).want(t, http.StatusNoContent, nil)

	entries, raw := auditLog(t, s, "", 7)
	byKind := map[string][]auditEntryDTO{}
	for i, e := range entries {
		if i > 0 && e.ID <= entries[i-1].ID {
			t.Fatalf("entries out of order: %d after %d", e.ID, entries[i-1].ID)
		}
		byKind[e.Kind] = append(byKind[e.Kind], e)
	}
	for kind, want := range map[string]int{
		"model_created": 1, "firmware_uploaded": 1, "device_created": 2, "provisioning_downloaded": 3,
		"rotation_triggered": 1, "secret_confirmed": 1, "rotated_secret_invalidated": 1, "secret_ack_refused": 1,
		"identity_repaired": 1, "device_updated": 1, "device_deleted": 1,
		"rotation_schedule_changed": 1, // the first start records ROTATION_CRON
	} {
		if got := len(byKind[kind]); got != want {
			t.Errorf("%d %s entries, want %d", got, kind, want)
		}
	}
	for kind, least := range map[string]int{"rotation_started": 3, "secret_generated": 2, "secret_fetched": 3, "rotation_timeout": 1} {
		if got := len(byKind[kind]); got < least {
			t.Errorf("%d %s entries, want at least %d", got, kind, least)
		}
	}
	// Actors: the operator's service account for admin calls, the device
	// for its own steps, the worker for timeouts.
	for _, e := range byKind["device_created"] {
		if e.Actor.Type != "admin" || e.Actor.ClientID != s.st.OperatorClientID || e.Actor.Subject == "" ||
			e.Actor.Name != "service-account-"+s.st.OperatorClientID {
			t.Errorf("device_created actor = %+v, want the operator", e.Actor)
		}
	}
	for _, kind := range []string{"secret_generated", "secret_fetched", "secret_confirmed", "secret_ack_refused"} {
		for _, e := range byKind[kind] {
			if e.Actor.Type != "device" || e.DeviceID == nil || e.ClientID == nil || e.Actor.ClientID != *e.ClientID {
				t.Errorf("%s entry %d: actor %+v for device %v/%v, want the device itself", kind, e.ID, e.Actor, e.DeviceID, e.ClientID)
			}
		}
	}
	if c := byKind["secret_confirmed"]; len(c) == 1 && (c[0].DeviceID == nil || *c[0].DeviceID != f.ID) {
		t.Errorf("secret_confirmed for device %v, want %d", c[0].DeviceID, f.ID)
	}
	byWorker := 0
	for _, e := range byKind["rotation_timeout"] {
		switch {
		case strings.HasPrefix(e.Detail, "device deactivated"):
			if e.Actor.Type != "admin" {
				t.Errorf("timeout by deactivation: actor %+v, want the admin who deactivated", e.Actor)
			}
		case e.Actor.Type == "system" && strings.HasPrefix(e.Actor.Subject, "rotation worker"):
			byWorker++
		default:
			t.Errorf("rotation_timeout actor = %+v (%s), want the rotation worker", e.Actor, e.Detail)
		}
	}
	if byWorker == 0 {
		t.Error("no rotation_timeout by the rotation worker")
	}
	if r := byKind["secret_ack_refused"]; len(r) == 1 && r[0].Outcome != "failure" {
		t.Errorf("refused ack outcome %q", r[0].Outcome)
	}

	// Filters: one device's history, and the deleted device's too.
	mine, _ := auditLog(t, s, fmt.Sprintf("device_id=%d", quiet.ID), 100)
	if len(mine) < 6 || mine[len(mine)-1].Kind != "device_deleted" {
		t.Errorf("device %d's history: %d entries ending with %q", quiet.ID, len(mine), mine[len(mine)-1].Kind)
	}
	downloads, _ := auditLog(t, s, "kind=provisioning_downloaded&actor="+s.st.OperatorClientID, 100)
	if len(downloads) != 3 {
		t.Errorf("downloads by the operator: %d, want 3", len(downloads))
	}

	// No secret in the answers, nor in the table.
	db, err := postgres.Open(context.Background(), s.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows []string
	if err := db.Bun().NewRaw("SELECT a::text FROM audit_log AS a ORDER BY id").Scan(t.Context(), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(entries) {
		t.Errorf("%d rows in audit_log, %d entries served", len(rows), len(entries))
	}
	table := strings.Join(rows, "\n")
	s.mu.Lock()
	secrets := append([]string(nil), s.secrets...)
	s.mu.Unlock()
	for _, d := range devs {
		secrets = append(secrets, d.current, d.next)
		secrets = append(secrets, d.fetched...)
	}
	checked := 0
	for _, secret := range secrets {
		if len(secret) < 8 {
			continue
		}
		checked++
		for what, text := range map[string]string{"GET /api/audit": string(raw), "audit_log": table} {
			if strings.Contains(text, secret) || strings.Contains(text, sha256Hex(secret)) {
				t.Errorf("%s holds a secret or token of the scenario (or its SHA-256)", what)
			}
		}
	}
	t.Logf("audit: %d entries of %d kinds; %d secrets and tokens checked against them", len(entries), len(byKind), checked)
}
