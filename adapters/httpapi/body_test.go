package httpapi_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

// zeros is an endless body of zero bytes that counts what was read of it.
type zeros struct {
	left int64
	read *atomic.Int64
}

func (z *zeros) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > z.left {
		n = z.left
	}
	clear(p[:n])
	z.left -= n
	z.read.Add(n)
	return int(n), nil
}

// sendWhole is what net/http's client does with a body and no
// Expect: 100-continue: it writes the whole body while waiting for the
// answer. It reports whether the connection was reused from an earlier
// request.
func sendWhole(t *testing.T, c *http.Client, method, url, token, contentType string, size int64, chunked bool) (response, bool) {
	t.Helper()
	var sent atomic.Int64
	var body io.Reader = &zeros{left: size, read: &sent}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if !chunked {
		req.ContentLength = size
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", contentType)
	var reused bool
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
	}))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s with a %d-byte body: %v (the client sent %d bytes)", method, url, size, err, sent.Load())
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}, reused
}

// A client that sends its whole body before reading receives the refusal,
// whichever refusal it is, and a drained connection is kept for the next
// request.
func TestRefusalsReachAClientSendingTheWholeBody(t *testing.T) {
	const max = 1 << 20
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.FirmwareMaxBytes = max }))
	e.cat.addModel("sensor", "")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	t.Cleanup(client.CloseIdleConnections)
	upload := e.base + "/api/device-models/1/firmware"

	for _, tc := range []struct {
		name    string
		method  string
		url     string
		token   string
		ct      string
		size    int64
		chunked bool
		status  int
	}{
		{"unauthenticated upload", http.MethodPost, upload, "", "application/octet-stream", max, false, http.StatusUnauthorized},
		{"bad token upload", http.MethodPost, upload, "forged", "application/octet-stream", max, false, http.StatusUnauthorized},
		{"unauthenticated chunked upload", http.MethodPost, upload, "", "application/octet-stream", max, true, http.StatusUnauthorized},
		{"viewer upload", http.MethodPost, upload, tokViewer, "application/octet-stream", max, false, http.StatusForbidden},
		{"declared too large", http.MethodPost, upload, tokAdmin, "application/octet-stream", max + 128<<10, false, http.StatusRequestEntityTooLarge},
		{"chunked too large", http.MethodPost, upload, tokAdmin, "application/octet-stream", max + 1, true, http.StatusRequestEntityTooLarge},
		{"multipart without a file part", http.MethodPost, upload, tokAdmin, "multipart/form-data; boundary=xyz", max, false, http.StatusBadRequest},
		{"too large JSON", http.MethodPost, e.base + "/api/devices", tokAdmin, "application/json", httpapi.DefaultJSONMaxBytes + 1, false, http.StatusRequestEntityTooLarge},
		{"chunked too large JSON", http.MethodPost, e.base + "/api/devices", tokAdmin, "application/json", httpapi.DefaultJSONMaxBytes + 1, true, http.StatusRequestEntityTooLarge},
		{"too large ack", http.MethodPost, e.base + "/iot/provisioning/ack", "", "application/json", 64 << 10, false, http.StatusRequestEntityTooLarge},
		{"body on a GET", http.MethodGet, e.base + "/api/devices", "", "application/json", 512 << 10, false, http.StatusRequestEntityTooLarge},
		{"unknown route", http.MethodPost, e.base + "/api/nothing-here", "", "application/json", 512 << 10, false, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := sendWhole(t, client, tc.method, tc.url, tc.token, tc.ct, tc.size, tc.chunked)
			wantProblem(t, r, tc.status)
			// The refused body was drained: the same connection serves the
			// next request.
			req, _ := http.NewRequest(http.MethodGet, e.base+"/health/live", nil)
			var reused bool
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused },
			}))
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("next request: %v", err)
			}
			resp.Body.Close()
			if !reused {
				t.Errorf("the connection was closed after the refusal; want it drained and kept")
			}
		})
	}
}

// A client that asks with Expect: 100-continue is told to go on (fasthttp
// answers before the handler runs) and then gets the refusal as well.
func TestRefusalWithExpectContinue(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.FirmwareMaxBytes = 1 << 20 }))
	e.cat.addModel("sensor", "")
	client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}}
	t.Cleanup(client.CloseIdleConnections)
	var sent atomic.Int64
	req, _ := http.NewRequest(http.MethodPost, e.base+"/api/device-models/1/firmware", &zeros{left: 1 << 20, read: &sent})
	req.ContentLength = 1 << 20
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("upload with Expect: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	wantProblem(t, response{status: resp.StatusCode, header: resp.Header, body: b}, http.StatusUnauthorized)
}

// Beyond DrainMaxBytes the server stops reading and closes the connection
// instead of reading an attacker's endless body.
func TestDrainIsBounded(t *testing.T) {
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.FirmwareMaxBytes = 64 << 10; c.DrainMaxBytes = 256 << 10 }))
	e.cat.addModel("sensor", "")
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /api/device-models/1/firmware HTTP/1.1\r\nHost: x\r\n"+
		"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	chunk := append([]byte("8000\r\n"), append(make([]byte, 0x8000), "\r\n"...)...)
	var written int64
	for written < 64<<20 {
		if _, err := conn.Write(chunk); err != nil {
			break // closed by the server: what this test wants
		}
		written += 0x8000
	}
	if written >= 64<<20 {
		t.Fatalf("the server read %d bytes of an unauthenticated body, want it to stop near 256 KiB", written)
	}
	t.Logf("the server closed the connection after %d KiB were written", written>>10)
}

// An authenticated upload is read as it streams in: what the catalog gets
// is the body, for both forms, at exactly the limit.
func TestUploadAtTheLimit(t *testing.T) {
	const max = 256 << 10
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.FirmwareMaxBytes = max }))
	e.cat.addModel("sensor", "")
	img := testImage(max)
	r := e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin,
		body: bytes.NewReader(img), contentType: "application/octet-stream"})
	wantStatus(t, r, http.StatusCreated)
	if !bytes.Equal(e.cat.lastUpload, img) {
		t.Errorf("raw body: the catalog got %d bytes, want the %d uploaded", len(e.cat.lastUpload), len(img))
	}
	body, ct := multipartBody(t, "file", img)
	r = e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin, body: body, contentType: ct})
	wantStatus(t, r, http.StatusCreated)
	if !bytes.Equal(e.cat.lastUpload, img) {
		t.Errorf("multipart: the catalog got %d bytes, want the %d uploaded", len(e.cat.lastUpload), len(img))
	}
}

// Member names are matched exactly: encoding/json alone would let
// "Config" fill config and a repeated member overwrite the first.
func TestJSONMembersAreExact(t *testing.T) {
	e := newEnv(t)
	e.cat.addModel("sensor", "")
	for _, tc := range []struct{ body, detail string }{
		{`{"device_model_id":1,"Config":{}}`, `unknown member "Config"`},
		{`{"DEVICE_MODEL_ID":1,"config":{}}`, `unknown member "DEVICE_MODEL_ID"`},
		{`{"device_model_id":1,"config":{},"config":[]}`, `member "config" appears twice`},
		{`{"device_model_id":2,"device_model_id":1,"config":{}}`, `member "device_model_id" appears twice`},
	} {
		p := wantProblem(t, e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, tc.body), http.StatusBadRequest)
		if !strings.Contains(p.Detail, tc.detail) {
			t.Errorf("%s: detail %q, want it to say %s", tc.body, p.Detail, tc.detail)
		}
	}
	// Nested objects (the config itself) are the device's business.
	wantStatus(t, e.sendJSON(http.MethodPost, "/api/devices", tokAdmin, `{"device_model_id":1,"config":{"A":1,"a":2}}`), http.StatusCreated)
}

// A chunked multipart body is limited like any other: too large is a 413,
// malformed a 400.
func TestChunkedMultipart(t *testing.T) {
	const max = 64 << 10
	e := newEnv(t, withConfig(func(c *httpapi.Config) { c.FirmwareMaxBytes = max }))
	e.cat.addModel("sensor", "")
	send := func(body []byte, ct string) response {
		// An io.Reader that is not a *bytes.Reader: net/http sends it chunked.
		return e.do(request{method: http.MethodPost, path: "/api/device-models/1/firmware", token: tokAdmin,
			body: io.MultiReader(bytes.NewReader(body)), contentType: ct})
	}
	big, ct := multipartBody(t, "file", testImage(max+1))
	wantProblem(t, send(big.Bytes(), ct), http.StatusRequestEntityTooLarge)
	huge, ct := multipartBody(t, "file", testImage(3*max))
	wantProblem(t, send(huge.Bytes(), ct), http.StatusRequestEntityTooLarge)
	wantProblem(t, send([]byte("--b\r\nno headers end"), "multipart/form-data; boundary=b"), http.StatusBadRequest)
	ok, ct := multipartBody(t, "file", testImage(max))
	wantStatus(t, send(ok.Bytes(), ct), http.StatusCreated)
}
