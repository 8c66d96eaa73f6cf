package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/nvs"
)

// TestDevicesCreate: `espmdm devices create` against a real espmdm writes
// exactly the files of the API's answer (recorded by a proxy between the
// two): the partitions, devices.csv; and refuses what it must.
func TestDevicesCreate(t *testing.T) {
	st := integration.Shared(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	serveEnv(t, st)
	t.Setenv("HTTP_ADDR", addr)
	t.Setenv("BASE_URL", "http://"+addr)
	cfg, err := app.LoadConfig(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	a := app.New(cfg)
	if err := a.Start(testContext(t, 3*time.Minute)); err != nil {
		t.Fatalf("start espmdm: %v", err)
	}
	t.Cleanup(func() { _ = a.Stop(testContext(t, time.Minute)) })
	base := "http://" + addr
	opEnv := map[string]string{"OIDC_TOKEN_URL": st.TokenURL, "OPERATOR_CLIENT_ID": st.OperatorClientID, "OPERATOR_CLIENT_SECRET": st.OperatorClientSecret}
	tok := operatorToken(t, http.DefaultClient, opEnv)
	code := "cli_" + randHex(4)
	body := fmt.Sprintf(`{"code":%q,"name":"CLI batch","config_schema":{"type":"object","required":["interval"]}}`, code)
	req, _ := http.NewRequest(http.MethodPost, base+"/api/device-models", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create model: %v %v", err, resp)
	}
	resp.Body.Close()

	// A proxy that keeps the batch's answer as the CLI received it.
	target, _ := url.Parse(base)
	var mu sync.Mutex
	var recorded []byte
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		if r.Request.URL.Path != "/api/devices/batch" {
			return nil
		}
		b, err := io.ReadAll(r.Body)
		r.Body.Close()
		mu.Lock()
		recorded = b
		mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(b))
		return err
	}
	srv := httptest.NewServer(proxy)
	defer srv.Close()

	t.Setenv("OPERATOR_CLIENT_SECRET", st.OperatorClientSecret)
	dir := filepath.Join(t.TempDir(), "out")
	args := []string{"devices", "create", "--url", srv.URL, "--token-url", st.TokenURL, "--client-id", st.OperatorClientID,
		"--model", code, "--count", "7", "--size", "0x4000", "--config", `{"interval":9}`, "--out", dir}
	var stdout, stderr bytes.Buffer
	if rc := run(context.Background(), args, &stdout, &stderr); rc != 0 {
		t.Fatalf("devices create: exit %d, stderr %s", rc, stderr.String())
	}
	if !strings.Contains(stdout.String(), "7 devices made, 0 failed") {
		t.Errorf("stdout %q, want the summary", stdout.String())
	}
	if strings.Contains(stderr.String(), "[") {
		t.Errorf("a progress bar on a non-terminal: %q", stderr.String())
	}

	// The directory holds exactly the answer's files, byte for byte.
	mu.Lock()
	zr, err := zip.NewReader(bytes.NewReader(recorded), int64(len(recorded)))
	mu.Unlock()
	if err != nil {
		t.Fatalf("the recorded answer is not a ZIP: %v", err)
	}
	var want []string
	for _, f := range zr.File {
		want = append(want, f.Name)
		rc, _ := f.Open()
		data, _ := io.ReadAll(rc)
		rc.Close()
		got, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: the CLI wrote %d bytes (%v), the API answered %d", f.Name, len(got), err, len(data))
		}
	}
	entries, _ := os.ReadDir(dir)
	var have []string
	for _, e := range entries {
		have = append(have, e.Name())
	}
	slices.Sort(want)
	if !slices.Equal(have, want) {
		t.Errorf("the directory holds %v, the answer %v", have, want)
	}
	devs, _ := os.ReadFile(filepath.Join(dir, "devices.csv"))
	rows, err := csv.NewReader(bytes.NewReader(devs)).ReadAll()
	if err != nil || len(rows) != 8 {
		t.Fatalf("devices.csv: %v, %d rows, want a header and 7", err, len(rows))
	}
	for _, row := range rows[1:] {
		img, err := os.ReadFile(filepath.Join(dir, row[3]))
		if err != nil || len(img) != 0x4000 {
			t.Fatalf("%s: %v, %d bytes, want 0x4000", row[3], err, len(img))
		}
		es, err := nvs.Decode(img)
		if err != nil {
			t.Fatalf("%s: %v", row[3], err)
		}
		found := false
		for _, e := range es {
			if e.Key == "client_id" && e.Value == row[2] {
				found = true
			}
		}
		if !found {
			t.Errorf("%s does not hold client_id %s", row[3], row[2])
		}
	}

	// Refusals: the same directory again, an unknown model, a bad config.
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"same directory": {[]string{"--model", code, "--count", "1", "--config", `{"interval":1}`, "--out", dir}, "devices.csv already"},
		"unknown model":  {[]string{"--model", "nope_" + randHex(3), "--count", "1", "--out", t.TempDir()}, "no device model"},
		"off schema":     {[]string{"--model", code, "--count", "2", "--out", t.TempDir()}, "config_schema"},
		"count":          {[]string{"--model", code, "--count", "1001", "--out", t.TempDir()}, "--count"},
	} {
		stderr.Reset()
		full := append([]string{"devices", "create", "--url", base, "--token-url", st.TokenURL, "--client-id", st.OperatorClientID}, c.args...)
		if rc := run(context.Background(), full, io.Discard, &stderr); rc != 1 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and %q", name, rc, stderr.String(), c.want)
		}
	}
	var list struct {
		Devices []json.RawMessage `json:"devices"`
	}
	req, _ = http.NewRequest(http.MethodGet, base+"/api/devices?limit=1000", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		_ = json.NewDecoder(resp.Body).Decode(&list)
		resp.Body.Close()
	}
	if len(list.Devices) != 7 {
		t.Errorf("%d devices after the refusals, want the 7 made", len(list.Devices))
	}
}

// The progress counter follows a ZIP as espmdm streams it (Deflate, data
// descriptors), entry by entry, and stops at the central directory.
func TestZipEntryCounter(t *testing.T) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	want := []string{"k1.bin", "k2.bin", "k3.bin", "devices.csv", "errors.csv"}
	for i, name := range want {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate})
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte{0xff, byte(i)}, 0x3000)
		if strings.HasSuffix(name, ".csv") {
			data = []byte("id,key\n1,k1\n")
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	(&zipEntryCounter{onEntry: func(n string) { got = append(got, n) }}).run(bufio.NewReader(bytes.NewReader(buf.Bytes())))
	if !slices.Equal(got, want) {
		t.Errorf("entries %v, want %v", got, want)
	}
	// A cut stream reports what passed, and ends.
	got = nil
	(&zipEntryCounter{onEntry: func(n string) { got = append(got, n) }}).run(bufio.NewReader(bytes.NewReader(buf.Bytes()[:buf.Len()/3])))
	if len(got) >= len(want) {
		t.Errorf("a cut stream gave %v", got)
	}
}
