package integration_test

import (
	"archive/zip"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/nvs"
	"github.com/espmdm/espmdm/ports"
)

// batchZip is a POST /api/devices/batch answer, read.
type batchZip struct {
	files   map[string][]byte
	devices [][]string // devices.csv without its header
	errors  [][]string // errors.csv without its header (nil when absent)
}

func readBatchZip(t *testing.T, body []byte) batchZip {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatalf("the answer is not a ZIP (%d bytes): %v", len(body), err)
	}
	out := batchZip{files: map[string][]byte{}}
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatalf("open %s: %v", f.Name, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("read %s: %v", f.Name, err)
		}
		out.files[f.Name] = b
	}
	readCSV := func(name string, header string) [][]string {
		b, ok := out.files[name]
		if !ok {
			return nil
		}
		recs, err := csv.NewReader(bytes.NewReader(b)).ReadAll()
		if err != nil || len(recs) == 0 || strings.Join(recs[0], ",") != header {
			t.Fatalf("%s: %v, header %v, want %s", name, err, recs, header)
		}
		return recs[1:]
	}
	if _, ok := out.files["devices.csv"]; !ok {
		t.Fatalf("the ZIP has no devices.csv: %v", names(out.files))
	}
	out.devices = readCSV("devices.csv", "id,key,client_id,nvs_file")
	out.errors = readCSV("errors.csv", "index,status,error")
	return out
}

func names(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// nvsFields decodes a partition's prov strings.
func nvsFields(t *testing.T, img []byte) map[string]string {
	t.Helper()
	entries, err := nvs.Decode(img)
	if err != nil {
		t.Fatalf("decode the partition: %v", err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.Namespace == "prov" && e.Type == nvs.TypeString {
			out[e.Key], _ = e.Value.(string)
		}
	}
	return out
}

// modelDevices lists the model's devices.
func modelDevices(t *testing.T, s *server, modelID int64) []deviceDTO {
	t.Helper()
	var list struct {
		Devices []deviceDTO `json:"devices"`
	}
	s.do(http.MethodGet, fmt.Sprintf("/api/devices?model_id=%d&limit=1000", modelID), s.viewer, nil).want(t, http.StatusOK, &list)
	return list.Devices
}

// modelClients lists the Keycloak clients of the model's devices.
func modelClients(t *testing.T, st *integration.Stack, code string) []string {
	t.Helper()
	tok := token(t, st, st.AdminClientID, st.AdminClientSecret)
	resp, body := adminCall(t, st, tok, http.MethodGet, "/clients?search=true&max=5000&clientId="+url.QueryEscape("iotdevice-"+code+"-"), nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("list clients: %s %s", resp.Status, body)
	}
	var cs []struct {
		ClientID string `json:"clientId"`
	}
	if err := json.Unmarshal(body, &cs); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range cs {
		out = append(out, c.ClientID)
	}
	return out
}

// TestE2EBatch: bad batches are refused before anything is made; a batch
// of 50 answers a ZIP whose partitions, read back with the nvs package,
// hold secrets that each obtain a token; a list of devices keeps each
// one's config; the audit has an entry per device.
func TestE2EBatch(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, map[string]any{"type": "object", "properties": map[string]any{"interval": map[string]any{"type": "integer", "minimum": 1}},
		"required": []string{"interval"}})

	for name, body := range map[string]string{
		"count 0":           fmt.Sprintf(`{"device_model_id":%d,"count":0,"config":{"interval":5}}`, m.ID),
		"count 1001":        fmt.Sprintf(`{"device_model_id":%d,"count":1001,"config":{"interval":5}}`, m.ID),
		"unknown model":     `{"device_model_id":987654321,"count":3}`,
		"config off schema": fmt.Sprintf(`{"device_model_id":%d,"count":3,"config":{"interval":0}}`, m.ID),
		"no config":         fmt.Sprintf(`{"device_model_id":%d,"count":3}`, m.ID),
		"one config off":    fmt.Sprintf(`{"device_model_id":%d,"devices":[{"config":{"interval":5}},{"config":{"interval":"x"}}]}`, m.ID),
		"size too small":    fmt.Sprintf(`{"device_model_id":%d,"count":3,"config":{"interval":5},"size":"0x2000"}`, m.ID),
		"size not a page":   fmt.Sprintf(`{"device_model_id":%d,"count":3,"config":{"interval":5},"size":24577}`, m.ID),
		"size too large":    fmt.Sprintf(`{"device_model_id":%d,"count":3,"config":{"interval":5},"size":"0x200000"}`, m.ID),
		"count and devices": fmt.Sprintf(`{"device_model_id":%d,"count":1,"devices":[{"config":{"interval":5}}]}`, m.ID),
		"neither":           fmt.Sprintf(`{"device_model_id":%d}`, m.ID),
		"empty devices":     fmt.Sprintf(`{"device_model_id":%d,"devices":[]}`, m.ID),
		"a tag off pattern": fmt.Sprintf(`{"device_model_id":%d,"devices":[{"config":{"interval":5},"tags":["Hall"]}]}`, m.ID),
	} {
		if d := s.do(http.MethodPost, "/api/devices/batch", s.admin, body).wantProblem(t, http.StatusBadRequest); d == "" {
			t.Errorf("%s: a 400 without a detail", name)
		}
	}
	s.do(http.MethodPost, "/api/devices/batch", s.viewer, fmt.Sprintf(`{"device_model_id":%d,"count":1,"config":{"interval":5}}`, m.ID)).
		wantProblem(t, http.StatusForbidden)
	if ds, cs := modelDevices(t, s, m.ID), modelClients(t, s.st, m.Code); len(ds) != 0 || len(cs) != 0 {
		t.Fatalf("refused batches left %d devices and %d clients", len(ds), len(cs))
	}

	// A batch of 50.
	began := time.Now()
	r := s.do(http.MethodPost, "/api/devices/batch", s.admin, fmt.Sprintf(`{"device_model_id":%d,"count":50,"config":{"interval":60},"size":"0x5000"}`, m.ID)).
		want(t, http.StatusOK, nil)
	t.Logf("batch of 50: %s, %d bytes of ZIP", time.Since(began).Round(time.Millisecond), len(r.body))
	if ct := r.header.Get("Content-Type"); ct != "application/zip" {
		t.Errorf("Content-Type = %q, want application/zip", ct)
	}
	z := readBatchZip(t, r.body)
	if len(z.devices) != 50 || z.errors != nil {
		t.Fatalf("devices.csv has %d rows and errors.csv %v; want 50 and none", len(z.devices), z.errors)
	}
	if len(z.files) != 51 {
		t.Errorf("the ZIP has %d files, want 50 partitions and devices.csv", len(z.files))
	}
	stored := map[int64]deviceDTO{}
	for _, d := range modelDevices(t, s, m.ID) {
		stored[d.ID] = d
	}
	if len(stored) != 50 {
		t.Errorf("%d devices stored, want 50", len(stored))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	tokens := 0
	for _, row := range z.devices {
		id, _ := strconv.ParseInt(row[0], 10, 64)
		key, clientID, file := row[1], row[2], row[3]
		d, ok := stored[id]
		if !ok || d.Key != key || d.ClientID != clientID || file != key+".bin" || string(d.Config) != `{"interval":60}` {
			t.Errorf("devices.csv row %v: stored as %+v", row, d)
			continue
		}
		img := z.files[file]
		if len(img) != 0x5000 {
			t.Errorf("%s: %d bytes, want 0x5000", file, len(img))
			continue
		}
		f := nvsFields(t, img)
		if f["device_key"] != key || f["client_id"] != clientID || f["client_secret"] == "" || f["token_url"] != s.st.TokenURL ||
			f["base_url"] != s.base || f["mqtt_password"] == "" {
			t.Errorf("%s: fields %v", file, keysOf(f))
		}
		s.keep(f["client_secret"], f["mqtt_password"])
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, code := tokenStatus(t, s.st, clientID, f["client_secret"]); code == http.StatusOK {
				mu.Lock()
				tokens++
				mu.Unlock()
			} else {
				t.Errorf("%s: the partition's secret gets no token (%d)", clientID, code)
			}
		}()
	}
	wg.Wait()
	if tokens != 50 {
		t.Errorf("%d of 50 secrets obtained a token", tokens)
	}

	// A list: each device its own config, partitions of the default size.
	r = s.do(http.MethodPost, "/api/devices/batch", s.admin, fmt.Sprintf(`{"device_model_id":%d,"devices":[{"config":{"interval":1}},{"config":{"interval":2}},{"config":{"interval":3}}]}`, m.ID)).
		want(t, http.StatusOK, nil)
	z = readBatchZip(t, r.body)
	if len(z.devices) != 3 {
		t.Fatalf("devices.csv has %d rows, want 3", len(z.devices))
	}
	for i, row := range z.devices {
		var d deviceDTO
		s.do(http.MethodGet, "/api/devices/"+row[0], s.viewer, nil).want(t, http.StatusOK, &d)
		if want := fmt.Sprintf(`{"interval":%d}`, i+1); string(d.Config) != want {
			t.Errorf("device %d (row %d): config %s, want %s", d.ID, i, d.Config, want)
		}
		if n := len(z.files[row[3]]); n != 0x6000 {
			t.Errorf("%s: %d bytes, want the default 0x6000", row[3], n)
		}
	}

	// The audit: each device made and its partition handed out.
	for kind, want := range map[string]int{"device_created": 53, "provisioning_downloaded": 53} {
		entries, _ := auditLog(t, s, "kind="+kind, 1000)
		if len(entries) != want {
			t.Errorf("%d %s entries, want %d", len(entries), kind, want)
		}
		for _, e := range entries {
			if e.DeviceID == nil || e.Actor.ClientID != s.st.OperatorClientID {
				t.Errorf("%s entry %d: device %v, actor %+v; want a device and the operator", kind, e.ID, e.DeviceID, e.Actor)
				break
			}
		}
	}
}

func keysOf(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestE2EBatchKeycloakDown: Keycloak stops in the middle of a batch. The
// devices made before stand and are in the ZIP; the rest are in errors.csv
// with the reason; no device is half made: every device row has its
// client, and the clients of failed devices that Keycloak made before it
// went are removed by the reconciler.
func TestE2EBatchKeycloakDown(t *testing.T) {
	s := startServer(t, nil)
	m := newModel(t, s, nil)
	const count = 1000

	type answer struct {
		status int
		body   []byte
		err    error
	}
	done := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, s.base+"/api/devices/batch",
			strings.NewReader(fmt.Sprintf(`{"device_model_id":%d,"count":%d}`, m.ID, count)))
		req.Header.Set("Authorization", "Bearer "+s.admin)
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Timeout: 5 * time.Minute}).Do(req)
		if err != nil {
			done <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- answer{resp.StatusCode, b, err}
	}()
	// Stop Keycloak once some devices are made.
	deadline := time.Now().Add(2 * time.Minute)
	for len(modelDevices(t, s, m.ID)) < 20 {
		if time.Now().After(deadline) {
			t.Fatal("the batch made fewer than 20 devices in 2 minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var a answer
	restart(t, s.st, integration.Keycloak, func() {
		select {
		case a = <-done:
		case <-time.After(4 * time.Minute):
			t.Fatal("the batch did not end while Keycloak was down")
		}
	})
	if a.err != nil || a.status != http.StatusOK {
		t.Fatalf("batch: %v, status %d: %s", a.err, a.status, a.body)
	}
	z := readBatchZip(t, a.body)
	made, failed := len(z.devices), len(z.errors)
	t.Logf("Keycloak stopped mid-batch: %d made, %d failed", made, failed)
	if made < 20 || made == count || made+failed != count {
		t.Fatalf("%d made and %d failed of %d: want at least 20 made, some failed, all accounted for", made, failed, count)
	}
	seen := map[int]bool{}
	for _, e := range z.errors {
		i, err := strconv.Atoi(e[0])
		if err != nil || i < 0 || i >= count || seen[i] || e[1] != "502" || !strings.Contains(e[2], "dependency") {
			t.Errorf("errors.csv row %v: want a unique index, 502 and the reason", e)
		}
		seen[i] = true
	}
	// Every device made stands: stored, and its client exists with the
	// partition's secret.
	s.waitReady(2 * time.Minute)
	stored := modelDevices(t, s, m.ID)
	if len(stored) != made {
		t.Errorf("%d devices stored, %d in devices.csv", len(stored), made)
	}
	for _, row := range z.devices {
		f := nvsFields(t, z.files[row[3]])
		s.keep(f["client_secret"], f["mqtt_password"])
	}
	for _, row := range z.devices[:5] {
		f := nvsFields(t, z.files[row[3]])
		if _, code := tokenStatus(t, s.st, row[2], f["client_secret"]); code != http.StatusOK {
			t.Errorf("%s: the partition's secret gets no token after the outage (%d)", row[2], code)
		}
	}
	// No client without its device, once the reconciler has passed: a
	// replica whose clock is 5 minutes ahead (so that clients made just now
	// are past the orphan grace) reconciles at its start and every second.
	// (Not the batch's own server: its reconciler would take a client made
	// a moment before its row for an orphan.)
	startServer(t, map[string]string{"DATABASE_URL": s.cfg.DatabaseURL, "RECONCILE_INTERVAL": "1s"},
		fx.Decorate(func(c ports.Clock) ports.Clock { return shiftedClock{c, 5 * time.Minute} }))
	deadline = time.Now().Add(time.Minute)
	for {
		cs := modelClients(t, s.st, m.Code)
		if len(cs) == made {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d device clients in Keycloak, %d devices: orphans left", len(cs), made)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
