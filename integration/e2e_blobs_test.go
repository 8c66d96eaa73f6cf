package integration_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/s3store"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
)

// Blobs in the stack's S3 bucket (SPEC §20): each test uses a prefix of
// its own, so that what it finds in the bucket is its own.

// s3Serve is the environment of an espmdm on the stack's bucket under
// prefix, and the store to look into that bucket with.
func s3Serve(t *testing.T, prefix string) (map[string]string, *s3store.Store) {
	t.Helper()
	st := integration.Shared(t)
	st.RequireS3(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := s3store.New(ctx, s3store.Config{
		Endpoint: st.S3Endpoint, Region: st.S3Region, Bucket: st.S3Bucket, Prefix: prefix,
		AccessKeyID: st.S3AccessKeyID, SecretAccessKey: st.S3SecretAccessKey, ForcePathStyle: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return map[string]string{"BLOB_STORE": "s3", "S3_PREFIX": prefix}, store
}

// bucketKeys lists the blobs of the bucket under the store's prefix.
func bucketKeys(t *testing.T, s *s3store.Store) []string {
	t.Helper()
	var keys []string
	if err := s.ListBlobs(t.Context(), func(i ports.BlobInfo) error { keys = append(keys, i.Key.Path()); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	return keys
}

// emptyDir fails the test unless dir holds nothing.
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 0 {
		t.Errorf("FIRMWARE_DIR %s holds %d entries (%v), want none with BLOB_STORE=s3", dir, len(entries), err)
	}
}

// TestE2EBlobsTwoReplicasOneBucket: two `espmdm serve` processes with
// separate FIRMWARE_DIRs on one database and one bucket. An upload taken
// by one is downloaded through the other, by the device and by the admin,
// whole and ranged, byte for byte; neither writes its directory; deleting
// the model through the second empties the bucket.
func TestE2EBlobsTwoReplicasOneBucket(t *testing.T) {
	st := integration.Shared(t)
	env, bucket := s3Serve(t, "e2e-replicas-"+randHex(4))
	env["DATABASE_URL"] = st.NewDatabase(t)
	env["SECRET_KEY"] = randHex(32) // both open what the other sealed
	dirs := map[string]string{"a": t.TempDir(), "b": t.TempDir()}
	replica := func(name string) *server {
		e := map[string]string{"FIRMWARE_DIR": dirs[name]}
		for k, v := range env {
			e[k] = v
		}
		s, _ := startProcess(t, e)
		s.keep(st.S3SecretAccessKey)
		return s
	}
	a, b := replica("a"), replica("b")

	m := newModel(t, a, nil)
	d := newDevice(t, a, m.ID, `{}`)
	image := bigFirmware("3.1.0", 6<<20) // more than one S3 part, whatever the upload path
	var fw firmwareDTO
	a.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), a.admin, bytes.NewReader(image),
		"Content-Type", "application/octet-stream").want(t, http.StatusCreated, &fw)
	sum := sha256.Sum256(image)
	if fw.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload: sha256 %s, want %x", fw.SHA256, sum)
	}
	want := []string{m.Code + "/" + fw.SHA256 + ".bin"}
	if got := bucketKeys(t, bucket); !slices.Equal(got, want) {
		t.Fatalf("the bucket holds %v, want %v", got, want)
	}

	devTok := b.token(d.ClientID, currentSecret(t, b, d.ID))
	whole := b.request(http.MethodGet, "/iot/firmware", devTok, nil).want(t, http.StatusOK, nil)
	if !bytes.Equal(whole.body, image) {
		t.Fatalf("/iot/firmware through the other replica: %d bytes, not the %d uploaded", len(whole.body), len(image))
	}
	if etag := whole.header.Get("ETag"); etag != `"`+fw.SHA256+`"` {
		t.Errorf("ETag %q, want the quoted SHA-256", etag)
	}
	for _, r := range []struct {
		header     string
		start, end int // inclusive
	}{
		{"bytes=0-15", 0, 15},
		{"bytes=5242000-5243999", 5242000, 5243999}, // across the 5 MiB mark
		{fmt.Sprintf("bytes=%d-", len(image)-1000), len(image) - 1000, len(image) - 1},
		{"bytes=-4096", len(image) - 4096, len(image) - 1},
	} {
		part := b.request(http.MethodGet, "/iot/firmware", devTok, nil, "Range", r.header).want(t, http.StatusPartialContent, nil)
		wantRange := fmt.Sprintf("bytes %d-%d/%d", r.start, r.end, len(image))
		if !bytes.Equal(part.body, image[r.start:r.end+1]) || part.header.Get("Content-Range") != wantRange {
			t.Errorf("Range %s: %d bytes, Content-Range %q; want %d bytes, %q", r.header, len(part.body),
				part.header.Get("Content-Range"), r.end-r.start+1, wantRange)
		}
	}
	b.request(http.MethodGet, "/iot/firmware", devTok, nil, "If-None-Match", whole.header.Get("ETag")).want(t, http.StatusNotModified, nil)
	admin := b.request(http.MethodGet, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), b.viewer, nil).want(t, http.StatusOK, nil)
	if !bytes.Equal(admin.body, image) {
		t.Errorf("admin download through the other replica: %d bytes, not the %d uploaded", len(admin.body), len(image))
	}
	emptyDir(t, dirs["a"])
	emptyDir(t, dirs["b"])

	b.do(http.MethodDelete, fmt.Sprintf("/api/devices/%d", d.ID), b.admin, nil).want(t, http.StatusNoContent, nil)
	b.do(http.MethodDelete, fmt.Sprintf("/api/device-models/%d", m.ID), b.admin, nil).want(t, http.StatusNoContent, nil)
	if got := bucketKeys(t, bucket); len(got) != 0 {
		t.Errorf("the bucket after the model was deleted holds %v, want nothing", got)
	}
}

// TestE2EBlobStoreDown: with S3Proxy stopped, uploads are 503 with nothing
// recorded (no history, no audit entry, no object), downloads are 503,
// readiness names the store; both work again once it is back. A firmware
// recorded but missing from the bucket is a 503 with a log line naming the
// blob, until the image is uploaded again.
func TestE2EBlobStoreDown(t *testing.T) {
	env, bucket := s3Serve(t, "e2e-down-"+randHex(4))
	s := startServer(t, env)
	s.keep(s.st.S3SecretAccessKey)
	m := newModel(t, s, nil)
	d := newDevice(t, s, m.ID, `{}`)
	devTok := s.token(d.ClientID, currentSecret(t, s, d.ID))
	fwPath := fmt.Sprintf("/api/device-models/%d/firmware", m.ID)
	upload := func(img []byte) response {
		return s.request(http.MethodPost, fwPath, s.admin, bytes.NewReader(img), "Content-Type", "application/octet-stream")
	}
	history := func() []string {
		var h struct {
			Versions []firmwareDTO `json:"versions"`
		}
		s.do(http.MethodGet, fwPath+"/versions", s.viewer, nil).want(t, http.StatusOK, &h)
		var v []string
		for _, f := range h.Versions {
			v = append(v, f.Version)
		}
		return v
	}
	v1, v2 := firmwareImage(esp32image.ChipESP32, "1.0.0"), firmwareImage(esp32image.ChipESP32, "1.1.0")
	upload(v1).want(t, http.StatusCreated, nil)

	restart(t, s.st, integration.S3, func() {
		upload(v2).wantProblem(t, http.StatusServiceUnavailable)
		if h := history(); !slices.Equal(h, []string{"1.0.0"}) {
			t.Errorf("history after an upload with the store down: %v, want [1.0.0]", h)
		}
		var got modelDTO
		s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d", m.ID), s.viewer, nil).want(t, http.StatusOK, &got)
		if got.FirmwareVersion == nil || *got.FirmwareVersion != "1.0.0" {
			t.Errorf("model firmware_version %v after a refused upload, want 1.0.0", got.FirmwareVersion)
		}
		s.request(http.MethodGet, "/iot/firmware", devTok, nil).wantProblem(t, http.StatusServiceUnavailable)
		s.request(http.MethodGet, "/iot/firmware", devTok, nil, "Range", "bytes=100-199").wantProblem(t, http.StatusServiceUnavailable)
		s.request(http.MethodGet, fwPath, s.viewer, nil).wantProblem(t, http.StatusServiceUnavailable)
		r := s.request(http.MethodGet, "/health/ready", "", nil)
		if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), `"blobstore"`) {
			t.Errorf("/health/ready with the store down: %d %s, want 503 naming blobstore", r.status, r.body)
		}
	})
	s.waitReady(time.Minute)
	if uploads, _ := auditLog(t, s, "kind=firmware_uploaded", 100); len(uploads) != 1 {
		t.Errorf("%d firmware_uploaded audit entries after an upload refused with the store down, want v1's alone", len(uploads))
	}
	sum1 := sha256.Sum256(v1)
	if got, want := bucketKeys(t, bucket), []string{fmt.Sprintf("%s/%x.bin", m.Code, sum1)}; !slices.Equal(got, want) {
		t.Errorf("the bucket once the store is back holds %v, want v1's blob alone %v", got, want)
	}
	if got := s.request(http.MethodGet, "/iot/firmware", devTok, nil).want(t, http.StatusOK, nil); !bytes.Equal(got.body, v1) {
		t.Errorf("/iot/firmware once the store is back: %d bytes, want v1's %d", len(got.body), len(v1))
	}
	upload(v2).want(t, http.StatusCreated, nil)
	if got := s.request(http.MethodGet, "/iot/firmware", devTok, nil).want(t, http.StatusOK, nil); !bytes.Equal(got.body, v2) {
		t.Errorf("/iot/firmware after the upload: %d bytes, want v2's %d", len(got.body), len(v2))
	}
	if h := history(); !slices.Equal(h, []string{"1.1.0", "1.0.0"}) {
		t.Errorf("history: %v, want [1.1.0 1.0.0]", h)
	}

	// The bucket loses the current binary behind espmdm's back.
	sum := sha256.Sum256(v2)
	key := ports.BlobKey{Kind: ports.BlobFirmware, Namespace: m.Code, SHA256: hex.EncodeToString(sum[:])}
	if err := bucket.DeleteBlob(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	if _, err := bucket.StatBlob(t.Context(), key); !errors.Is(err, model.ErrBlobNotFound) {
		t.Fatalf("the blob is still in the bucket: %v", err)
	}
	s.request(http.MethodGet, "/iot/firmware", devTok, nil).wantProblem(t, http.StatusServiceUnavailable)
	s.request(http.MethodGet, fwPath, s.viewer, nil).wantProblem(t, http.StatusServiceUnavailable)
	logged := false
	for _, e := range s.logs.FilterMessage("request failed").All() {
		if strings.Contains(fmt.Sprint(e.ContextMap()), key.Path()) {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no log line names the missing blob %s", key)
	}
	upload(v2).want(t, http.StatusOK, nil) // the current image again: its blob put back
	if got := s.request(http.MethodGet, "/iot/firmware", devTok, nil).want(t, http.StatusOK, nil); !bytes.Equal(got.body, v2) {
		t.Errorf("/iot/firmware after the re-upload: %d bytes, want v2's %d", len(got.body), len(v2))
	}
}

// TestE2EBlobStoreStartChecks: espmdm refuses to start on a bucket that
// does not exist or an endpoint nothing answers on, saying which, without
// the secret.
func TestE2EBlobStoreStartChecks(t *testing.T) {
	st := integration.Shared(t)
	st.RequireS3(t)
	for _, c := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"missing bucket", map[string]string{"BLOB_STORE": "s3", "S3_BUCKET": "no-such-bucket-" + randHex(3)}, "does not exist"},
		{"unreachable endpoint", map[string]string{"BLOB_STORE": "s3", "S3_ENDPOINT": "http://127.0.0.1:1"}, "unavailable"},
		{"refused credentials", map[string]string{"BLOB_STORE": "s3", "S3_SECRET_ACCESS_KEY": "wrong-" + randHex(8)}, "refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out := serveOnce(t, c.env)
			if code == 0 || !strings.Contains(out, "blob store") || !strings.Contains(out, c.want) {
				t.Errorf("espmdm serve exited %d: %s\nwant a failure saying %q", code, out, c.want)
			}
			for _, secret := range []string{st.S3SecretAccessKey, c.env["S3_SECRET_ACCESS_KEY"]} {
				if secret != "" && strings.Contains(out, secret) {
					t.Errorf("the output shows an S3 secret")
				}
			}
		})
	}
}

// serveOnce runs `espmdm serve` with the stack's environment and env,
// expecting it to stop by itself within a minute (a failed start), and
// returns its exit code and output. One that keeps serving is killed and
// fails the test.
func serveOnce(t *testing.T, env map[string]string) (int, string) {
	t.Helper()
	bin, err := espmdmBinary()
	if err != nil {
		t.Fatal(err)
	}
	vars := serverVars(t, integration.Shared(t), env)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve")
	cmd.Env = os.Environ()
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("espmdm serve still running after a minute:\n%s", out)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("espmdm serve: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}
