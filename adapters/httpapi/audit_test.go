package httpapi_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// fakeAudit is a ports.AuditReader that records the filter and the actor
// of each call.
type fakeAudit struct {
	mu      sync.Mutex
	filters []ports.AuditFilter
	actors  []model.Actor
	page    ports.AuditPage
}

func (f *fakeAudit) ListAudit(ctx context.Context, flt ports.AuditFilter) (ports.AuditPage, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.filters = append(f.filters, flt)
	f.actors = append(f.actors, model.ActorOf(ctx))
	return f.page, nil
}

func (f *fakeAudit) last() (ports.AuditFilter, model.Actor) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.filters[len(f.filters)-1], f.actors[len(f.actors)-1]
}

func withAudit(a ports.AuditReader) envOption {
	return func(_ *httpapi.Config, d *httpapi.Deps) { d.Audit = a }
}

func TestAuditRoute(t *testing.T) {
	at := time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)
	fa := &fakeAudit{page: ports.AuditPage{
		Entries: []model.AuditEntry{
			{ID: 41, At: at, Kind: model.AuditSecretConfirmed, Actor: model.DeviceActor("iotdevice-m-abcdefgh"),
				DeviceID: 7, ClientID: "iotdevice-m-abcdefgh", ModelID: 2, Outcome: model.OutcomeSuccess, Detail: "confirmed by ack"},
			{ID: 42, At: at, Kind: model.AuditRotationTriggered, Actor: model.Actor{Type: model.ActorAdmin, Subject: "alice"},
				Outcome: model.OutcomeSuccess, Detail: "2 device(s) queued"},
		},
		NextAfterID: 42,
	}}
	e := newEnv(t, withAudit(fa))

	r := e.get("/api/audit?limit=2&device_id=7&kind=secret_confirmed&actor=alice&since=2025-06-01T00:00:00Z", tokViewer)
	wantStatus(t, r, http.StatusOK)
	var out struct {
		Entries []struct {
			ID    int64  `json:"id"`
			At    string `json:"at"`
			Kind  string `json:"kind"`
			Actor struct {
				Type, Subject, ClientID string
			} `json:"actor"`
			DeviceID *int64  `json:"device_id"`
			ClientID *string `json:"client_id"`
			ModelID  *int64  `json:"device_model_id"`
			Outcome  string  `json:"outcome"`
			Detail   string  `json:"detail"`
		} `json:"entries"`
		NextCursor *string `json:"next_cursor"`
	}
	r.json(t, &out)
	if len(out.Entries) != 2 || out.Entries[0].Kind != "secret_confirmed" || out.Entries[0].At != "2025-06-01T08:00:00Z" ||
		out.Entries[0].DeviceID == nil || *out.Entries[0].DeviceID != 7 || out.Entries[1].DeviceID != nil || out.Entries[1].ClientID != nil {
		t.Fatalf("entries = %s", r.body)
	}
	if out.NextCursor == nil {
		t.Fatal("next_cursor missing on a page with more")
	}
	// An entry about no device leaves the members out: never a null id.
	var raw struct {
		Entries []map[string]any `json:"entries"`
	}
	r.json(t, &raw)
	for _, k := range []string{"device_id", "client_id", "device_model_id"} {
		if v, ok := raw.Entries[1][k]; ok {
			t.Errorf("an entry about no device carries %s: %v", k, v)
		}
	}
	f, actor := fa.last()
	want := ports.AuditFilter{Limit: 2, DeviceID: 7, Kind: model.AuditSecretConfirmed, Actor: "alice", Since: time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)}
	if f != want {
		t.Errorf("filter = %+v, want %+v", f, want)
	}
	if actor.Type != model.ActorAdmin || actor.Subject != "victor" {
		t.Errorf("the core saw actor %+v, want the viewer's token subject", actor)
	}

	// The cursor and after= page on.
	wantStatus(t, e.get("/api/audit?cursor="+*out.NextCursor, tokViewer), http.StatusOK)
	if f, _ := fa.last(); f.AfterID != 42 {
		t.Errorf("cursor gave AfterID %d, want 42", f.AfterID)
	}
	wantStatus(t, e.get("/api/audit?after=17", tokViewer), http.StatusOK)
	if f, _ := fa.last(); f.AfterID != 17 {
		t.Errorf("after=17 gave AfterID %d", f.AfterID)
	}
	wantStatus(t, e.get("/api/audit?after=50&cursor="+*out.NextCursor, tokViewer), http.StatusOK)
	if f, _ := fa.last(); f.AfterID != 50 {
		t.Errorf("after=50 with a cursor after 42 gave AfterID %d, want the larger", f.AfterID)
	}
	// maxLength counts characters, as the document's schema does.
	wantStatus(t, e.get("/api/audit?actor="+strings.Repeat("é", 255), tokViewer), http.StatusOK)

	for _, q := range []string{
		"limit=0", "limit=1001", "limit=x", "device_id=0", "device_id=-1", "device_id=abc",
		"kind=nope", "since=yesterday", "after=-1", "after=x", "cursor=zzz", "cursor=c1.MQ&after=1", "since=", "kind=",
		"actor=" + strings.Repeat("a", 256), "actor=" + strings.Repeat("é", 256), "actor=a%00b",
	} {
		r := e.get("/api/audit?"+q, tokViewer)
		wantStatus(t, r, http.StatusBadRequest)
		r.problem(t)
	}
	wantStatus(t, e.get("/api/audit", ""), http.StatusUnauthorized)
	wantStatus(t, e.get("/api/audit", tokNoRole), http.StatusForbidden)
}

func TestAuditRouteWithoutALog(t *testing.T) {
	e := newEnv(t)
	r := e.get("/api/audit", tokAdmin)
	wantStatus(t, r, http.StatusServiceUnavailable)
	r.problem(t)
}
