package s3store_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/adapters/s3store"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// blobsOf lists a store as key -> size.
func blobsOf(t *testing.T, s ports.BlobStore) map[ports.BlobKey]int64 {
	t.Helper()
	got := map[ports.BlobKey]int64{}
	if err := s.ListBlobs(t.Context(), func(i ports.BlobInfo) error { got[i.Key] = i.Size; return nil }); err != nil {
		t.Fatalf("ListBlobs: %v", err)
	}
	return got
}

// A directory of 50 blobs (firmware of several models, ELFs, core dumps)
// moves into the bucket whole, each checked; a second run copies nothing;
// a blob that rotted on disk is refused and named, the others go on.
func TestMigrateADirectoryIntoTheBucket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "firmware")
	from, err := fsstore.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer from.Close()
	kinds := []ports.BlobKind{ports.BlobFirmware, ports.BlobFirmware, ports.BlobELF, ports.BlobCoreDump}
	want := map[ports.BlobKey]int64{}
	var total int64
	for i := range 50 {
		data, key := newBlob(fmt.Sprintf("model_%d", i%5), 1000+i*4099)
		key.Kind = kinds[i%len(kinds)]
		if _, err := from.PutBlob(t.Context(), key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
			t.Fatal(err)
		}
		want[key] = int64(len(data))
		total += int64(len(data))
	}
	if err := os.WriteFile(filepath.Join(dir, "model_0", ".upload-LEFT.tmp"), []byte("half an upload"), 0o600); err != nil {
		t.Fatal(err)
	}
	to := open(t, config(t))

	var reports []s3store.MigrateProgress
	res, err := s3store.Migrate(t.Context(), from, to, func(p s3store.MigrateProgress) { reports = append(reports, p) })
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if wantRes := (s3store.MigrateResult{Total: 50, Copied: 50, Bytes: total}); res != wantRes {
		t.Errorf("first run = %+v, want %+v", res, wantRes)
	}
	if len(reports) != 50 {
		t.Fatalf("progress was reported %d times, want 50", len(reports))
	}
	for i, p := range reports {
		if p.Done != i+1 || p.Total != 50 || p.Err != nil {
			t.Errorf("report %d: Done %d/%d, Err %v; want %d/50, nil", i, p.Done, p.Total, p.Err, i+1)
		}
	}
	if last := reports[49]; last.Copied != 50 || last.Bytes != total {
		t.Errorf("last report: %d copied, %d bytes; want 50, %d", last.Copied, last.Bytes, total)
	}
	if got := blobsOf(t, to); !equalSizes(got, want) {
		t.Fatalf("the bucket holds %d blobs %v, want the directory's %d", len(got), got, len(want))
	}
	for key := range want {
		wantHash(t, to, key)
	}

	res, err = s3store.Migrate(t.Context(), from, to, nil)
	if err != nil || res != (s3store.MigrateResult{Total: 50, Skipped: 50}) {
		t.Errorf("second run = %+v, %v; want all 50 skipped", res, err)
	}
	if got := blobsOf(t, to); !equalSizes(got, want) {
		t.Errorf("after the second run the bucket holds %d blobs, want %d", len(got), len(want))
	}

	// Rot one blob on disk (same size, one byte changed) that the bucket
	// does not hold yet, and add a new one.
	var rotten ports.BlobKey
	for k := range want {
		rotten = k
		break
	}
	if err := to.DeleteBlob(t.Context(), rotten); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, filepath.FromSlash(rotten.Path()))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh, freshKey := newBlob("model_9", 5000)
	if _, err := from.PutBlob(t.Context(), freshKey, bytes.NewReader(fresh), 5000, 0); err != nil {
		t.Fatal(err)
	}
	res, err = s3store.Migrate(t.Context(), from, to, nil)
	if res != (s3store.MigrateResult{Total: 51, Copied: 1, Skipped: 49, Failed: 1, Bytes: 5000}) {
		t.Errorf("third run = %+v, want 1 copied, 49 skipped, 1 failed", res)
	}
	if err == nil || !strings.Contains(err.Error(), rotten.String()) || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("third run's error = %v, want one naming %s and its SHA-256", err, rotten)
	}
	if _, err := to.StatBlob(t.Context(), rotten); !errors.Is(err, model.ErrBlobNotFound) {
		t.Errorf("the rotten blob reached the bucket (StatBlob: %v)", err)
	}
	wantHash(t, to, freshKey)
}

// A store that is down stops the migration at once instead of failing
// every remaining blob.
func TestMigrateStopsWhenAStoreIsDown(t *testing.T) {
	from, to := portstest.NewBlobStore(), portstest.NewBlobStore()
	for i := range 5 {
		data, key := newBlob("m", 100+i)
		if _, err := from.PutBlob(t.Context(), key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
			t.Fatal(err)
		}
	}
	puts := 0
	to.Hook = func(op string) error {
		if op == "PutBlob" {
			if puts++; puts == 3 {
				return &model.UnavailableError{Service: model.ServiceBlobStore, Err: errors.New("connection refused")}
			}
		}
		return nil
	}
	calls := 0
	res, err := s3store.Migrate(t.Context(), from, to, func(s3store.MigrateProgress) { calls++ })
	if !errors.Is(err, model.ErrUnavailable) {
		t.Errorf("Migrate with the destination down: got %v, want ErrUnavailable", err)
	}
	if res.Copied != 2 || res.Failed != 0 || calls != 2 || to.Len() != 2 {
		t.Errorf("Migrate went on after the store went down: %+v, %d reports, %d stored; want 2 copied, then a stop", res, calls, to.Len())
	}
}

func equalSizes(a, b map[ports.BlobKey]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

// wantHash reads the blob and checks it hashes to its key.
func wantHash(t *testing.T, s ports.BlobStore, key ports.BlobKey) {
	t.Helper()
	b, err := s.OpenBlob(t.Context(), key)
	if err != nil {
		t.Fatalf("OpenBlob(%s): %v", key, err)
	}
	defer b.Close()
	h := sha256.New()
	if _, err := io.Copy(h, b); err != nil {
		t.Fatalf("reading %s: %v", key, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != key.SHA256 {
		t.Errorf("%s reads back as content with SHA-256 %s", key, got)
	}
}
