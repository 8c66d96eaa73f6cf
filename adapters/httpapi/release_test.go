package httpapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Released and stored firmware and device tags (SPEC §16) on the admin API.

type releasedJSON struct {
	ID         int64   `json:"id"`
	SHA256     string  `json:"sha256"`
	Released   bool    `json:"released"`
	ReleasedAt *string `json:"released_at"`
}

func TestFirmwareReleaseQueryAndRoute(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	upload := func(query string) response {
		return e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware" + query, token: tokAdmin,
			body: bytes.NewReader(testImage(100 + len(query))), contentType: "application/octet-stream"})
	}
	r := upload("")
	wantStatus(t, r, http.StatusCreated)
	var v1 releasedJSON
	r.json(t, &v1)
	if !v1.Released || v1.ReleasedAt == nil || e.cat.lastUploadOpts.Store {
		t.Errorf("default upload = %s (opts %+v); want released", r.body, e.cat.lastUploadOpts)
	}
	r = upload("?release=false")
	wantStatus(t, r, http.StatusCreated)
	var v2 releasedJSON
	r.json(t, &v2)
	if v2.Released || v2.ReleasedAt != nil || !e.cat.lastUploadOpts.Store {
		t.Errorf("release=false upload = %s (opts %+v); want stored", r.body, e.cat.lastUploadOpts)
	}
	for _, q := range []string{"?release=no", "?release=", "?release=FALSE"} {
		if p := wantProblem(t, upload(q), http.StatusBadRequest); p.Field != "release" {
			t.Errorf("%s: problem field %q, want release", q, p.Field)
		}
	}

	history := func() []releasedJSON {
		t.Helper()
		r := e.do(request{method: http.MethodGet, path: "/api/device-models/1/firmware/versions", token: tokViewer})
		wantStatus(t, r, http.StatusOK)
		var out struct {
			Versions []releasedJSON `json:"versions"`
		}
		r.json(t, &out)
		return out.Versions
	}
	if h := history(); len(h) != 2 || h[0].ID != v2.ID || h[0].Released || h[0].ReleasedAt != nil || !h[1].Released {
		t.Errorf("history %+v, want v2 stored, v1 released", h)
	}

	release := func(sha, token string) response {
		return e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware/" + sha + "/release", token: token})
	}
	r = release(v2.SHA256, tokAdmin)
	wantStatus(t, r, http.StatusOK)
	var got releasedJSON
	r.json(t, &got)
	if got.ID != v2.ID || !got.Released || got.ReleasedAt == nil {
		t.Errorf("release answer %s", r.body)
	}
	if h := history(); !h[0].Released || h[1].Released {
		t.Errorf("history after the release %+v, want v2 released alone", h)
	}
	wantStatus(t, release(v2.SHA256, tokAdmin), http.StatusOK) // again: unchanged
	wantStatus(t, release(v2.SHA256, tokViewer), http.StatusForbidden)
	wantProblem(t, release(strings.Repeat("0", 64), tokAdmin), http.StatusNotFound)
	if p := wantProblem(t, release("ABC", tokAdmin), http.StatusBadRequest); p.Field != "sha256" {
		t.Errorf("bad sha256: field %q", p.Field)
	}
	wantProblem(t, e.do(request{method: http.MethodPost, path: "/api/device-models/9/firmware/" + v1.SHA256 + "/release", token: tokAdmin}),
		http.StatusNotFound)
}

func TestDeviceTagsOnTheAPI(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	r := e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":1,"config":{},"tags":["b","a"]}`)
	wantStatus(t, r, http.StatusCreated)
	var d struct {
		ID   int64    `json:"id"`
		Tags []string `json:"tags"`
	}
	r.json(t, &d)
	if !slices.Equal(e.cat.lastNewDevice.Tags, []string{"b", "a"}) || d.Tags == nil {
		t.Errorf("tags passed %v, answered %s", e.cat.lastNewDevice.Tags, r.body)
	}
	r = e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":1,"config":{}}`)
	wantStatus(t, r, http.StatusCreated)
	var raw map[string]json.RawMessage
	r.json(t, &raw)
	if string(raw["tags"]) != "[]" {
		t.Errorf("a device without tags answers tags %s, want []", raw["tags"])
	}
	for _, body := range []string{
		`{"device_model_id":1,"config":{},"tags":null}`,
		`{"device_model_id":1,"config":{},"tags":"a"}`,
		`{"device_model_id":1,"config":{},"tags":[1]}`,
	} {
		if p := wantProblem(t, e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, body), http.StatusBadRequest); p.Field != "tags" {
			t.Errorf("%s: field %q, want tags", body, p.Field)
		}
	}

	path := "/api/devices/" + strconv.FormatInt(d.ID, 10)
	wantStatus(t, e.sendJSON(http.MethodPut, path, tokAdmin, `{"active":true}`), http.StatusOK)
	if e.cat.lastDevUpdate.Tags != nil {
		t.Errorf("PUT without tags passed tags %v, want nil (unchanged)", *e.cat.lastDevUpdate.Tags)
	}
	wantStatus(t, e.sendJSON(http.MethodPut, path, tokAdmin, `{"tags":[]}`), http.StatusOK)
	if u := e.cat.lastDevUpdate.Tags; u == nil || len(*u) != 0 {
		t.Errorf("PUT tags [] passed %v, want an empty set", u)
	}
	wantProblem(t, e.sendJSON(http.MethodPut, path, tokAdmin, `{"tags":null}`), http.StatusBadRequest)

	wantStatus(t, e.do(request{method: http.MethodGet, path: "/api/devices?tag=site:berlin&tag=canary", token: tokViewer}), http.StatusOK)
	if f := e.cat.lastFilter; !slices.Equal(f.Tags, []string{"site:berlin", "canary"}) {
		t.Errorf("tag filter passed %v", f.Tags)
	}
	for _, q := range []string{"?tag=Bad", "?tag=", "?tag=a%20b"} {
		if p := wantProblem(t, e.do(request{method: http.MethodGet, path: "/api/devices" + q, token: tokViewer}), http.StatusBadRequest); p.Field != "tag" {
			t.Errorf("%s: field %q, want tag", q, p.Field)
		}
	}
}
