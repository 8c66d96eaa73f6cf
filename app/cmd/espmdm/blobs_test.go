package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/adapters/s3store"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
)

// blobsEnv points the S3_* variables at the stack's S3 server under a
// prefix of the test's own, and FIRMWARE_DIR at dir; it returns the
// bucket's store.
func blobsEnv(t *testing.T, dir string) *s3store.Store {
	t.Helper()
	st := integration.Shared(t)
	st.RequireS3(t)
	prefix := "migrate-" + randHex(5)
	for k, v := range st.S3Env() {
		t.Setenv(k, v)
	}
	t.Setenv("S3_PREFIX", prefix)
	t.Setenv("FIRMWARE_DIR", dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := s3store.New(ctx, s3store.Config{
		Endpoint: st.S3Endpoint, Region: st.S3Region, Bucket: st.S3Bucket, Prefix: prefix,
		AccessKeyID: st.S3AccessKeyID, SecretAccessKey: st.S3SecretAccessKey, ForcePathStyle: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// fillDir puts n firmware binaries of a few models (and an ELF) in a
// directory store at dir, returning every blob's content by key.
func fillDir(t *testing.T, dir string, n int) map[ports.BlobKey][]byte {
	t.Helper()
	fs, err := fsstore.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	blobs := map[ports.BlobKey][]byte{}
	for i := range n {
		data := make([]byte, 1000+i*997)
		_, _ = rand.Read(data)
		sum := sha256.Sum256(data)
		kind := ports.BlobFirmware
		if i == n-1 {
			kind = ports.BlobELF
		}
		key := ports.BlobKey{Kind: kind, Namespace: fmt.Sprintf("model_%d", i%4), SHA256: hex.EncodeToString(sum[:])}
		if _, err := fs.PutBlob(t.Context(), key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
			t.Fatal(err)
		}
		blobs[key] = data
	}
	// Not blobs: an upload's temporary file and a stray note.
	for name, data := range map[string]string{"model_0/.upload-X.tmp": "partial", "model_1/README": "notes"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return blobs
}

// bucketHolds fails the test unless the bucket holds exactly want.
func bucketHolds(t *testing.T, s *s3store.Store, want map[ports.BlobKey][]byte) {
	t.Helper()
	got := 0
	err := s.ListBlobs(t.Context(), func(i ports.BlobInfo) error {
		got++
		data, ok := want[i.Key]
		if !ok {
			t.Errorf("the bucket holds %s, which the directory does not", i.Key)
			return nil
		}
		b, err := s.OpenBlob(t.Context(), i.Key)
		if err != nil {
			return err
		}
		defer b.Close()
		content, err := io.ReadAll(b)
		if err != nil {
			return err
		}
		if !bytes.Equal(content, data) {
			t.Errorf("%s: %d bytes in the bucket differ from the directory's %d", i.Key, len(content), len(data))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != len(want) {
		t.Errorf("the bucket holds %d blobs, want %d", got, len(want))
	}
}

// TestBlobsMigrate: a directory of 50 blobs goes to the bucket byte for
// byte; a second run copies nothing and says so; a blob missing from the
// bucket is copied by the next run, alone.
func TestBlobsMigrate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "firmware")
	blobs := fillDir(t, dir, 50)
	s3 := blobsEnv(t, dir)
	ctx := testContext(t, 5*time.Minute)

	code, out, errOut := runCLIContext(t, ctx, "blobs", "migrate", "--to", "s3")
	if code != 0 {
		t.Fatalf("first run: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.HasPrefix(out, "50 of 50 blobs copied") {
		t.Errorf("first run said %q, want 50 of 50 blobs copied", out)
	}
	// Not a terminal: a line per blob.
	if n := strings.Count(errOut, " copied ("); n != 50 {
		t.Errorf("first run: %d progress lines say copied, want 50:\n%s", n, errOut)
	}
	bucketHolds(t, s3, blobs)

	code, out, errOut = runCLIContext(t, ctx, "blobs", "migrate", "--to", "s3")
	if code != 0 || !strings.HasPrefix(out, "nothing to copy: all 50 blobs are in the bucket") {
		t.Fatalf("second run: exit %d, %q; want nothing copied\n%s", code, out, errOut)
	}
	if n := strings.Count(errOut, "already there"); n != 50 {
		t.Errorf("second run: %d blobs already there, want 50:\n%s", n, errOut)
	}

	var gone ports.BlobKey
	for k := range blobs {
		gone = k
		break
	}
	if err := s3.DeleteBlob(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCLIContext(t, ctx, "blobs", "migrate", "--to", "s3")
	if code != 0 || !strings.HasPrefix(out, "1 of 50 blobs copied") || !strings.Contains(errOut, gone.String()+" copied") {
		t.Fatalf("third run after deleting %s from the bucket: exit %d, %q; want it copied alone\n%s", gone, code, out, errOut)
	}
	bucketHolds(t, s3, blobs)
}

// A blob whose content no longer matches its name is named and not
// copied; the others are; the command fails.
func TestBlobsMigrateRefusesARottenBlob(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "firmware")
	blobs := fillDir(t, dir, 3)
	s3 := blobsEnv(t, dir)
	var rotten ports.BlobKey
	for k := range blobs {
		if k.Kind == ports.BlobFirmware {
			rotten = k
			break
		}
	}
	path := filepath.Join(dir, filepath.FromSlash(rotten.Path()))
	data := bytes.Clone(blobs[rotten])
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLIContext(t, testContext(t, 2*time.Minute), "blobs", "migrate", "--to", "s3")
	if code != 1 || !strings.Contains(errOut, rotten.String()) || !strings.Contains(out, "2 of 3 blobs copied") {
		t.Fatalf("exit %d, %q; want 1, two copied and %s named\n%s", code, out, rotten, errOut)
	}
	if _, err := s3.StatBlob(t.Context(), rotten); !errors.Is(err, model.ErrBlobNotFound) {
		t.Errorf("the rotten blob in the bucket: %v, want it not copied", err)
	}
	delete(blobs, rotten)
	bucketHolds(t, s3, blobs)
}

// What the command refuses: another target, a missing S3 variable, a
// FIRMWARE_DIR that is not there (never taken for an empty one).
func TestBlobsMigrateRefusals(t *testing.T) {
	dir := t.TempDir()
	blobsEnv(t, dir)
	ctx := testContext(t, time.Minute)
	if code, _, errOut := runCLIContext(t, ctx, "blobs", "migrate", "--to", "fs"); code == 0 || !strings.Contains(errOut, "--to must be s3") {
		t.Errorf("--to fs: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLIContext(t, ctx, "blobs", "migrate"); code == 0 || !strings.Contains(errOut, "to") {
		t.Errorf("without --to: exit %d, %q", code, errOut)
	}
	missing := filepath.Join(dir, "nope")
	t.Setenv("FIRMWARE_DIR", missing)
	if code, _, errOut := runCLIContext(t, ctx, "blobs", "migrate", "--to", "s3"); code == 0 || !strings.Contains(errOut, "not a directory") {
		t.Errorf("missing FIRMWARE_DIR: exit %d, %q", code, errOut)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the missing FIRMWARE_DIR was created")
	}
	t.Setenv("FIRMWARE_DIR", dir)
	secret := os.Getenv("S3_SECRET_ACCESS_KEY")
	t.Setenv("S3_BUCKET", "")
	if code, _, errOut := runCLIContext(t, ctx, "blobs", "migrate", "--to", "s3"); code == 0 || !strings.Contains(errOut, "S3_BUCKET") || strings.Contains(errOut, secret) {
		t.Errorf("without S3_BUCKET: exit %d, %q", code, errOut)
	}
	t.Setenv("S3_BUCKET", "no-such-bucket-"+randHex(3))
	if code, _, errOut := runCLIContext(t, ctx, "blobs", "migrate", "--to", "s3"); code == 0 || !strings.Contains(errOut, "does not exist") || strings.Contains(errOut, secret) {
		t.Errorf("a bucket that does not exist: exit %d, %q", code, errOut)
	}
}

// On a terminal the progress is one line rewritten in place (a carriage
// return and an erase before each state), ended by one newline; the
// summary is on standard output alone.
func TestBlobsMigrateTerminalProgress(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "firmware")
	fillDir(t, dir, 5)
	blobsEnv(t, dir)
	cfg, err := app.LoadBlobConfig(os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	var out, progress bytes.Buffer
	if err := migrateBlobs(testContext(t, time.Minute), cfg, &out, &progress, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(progress.String(), "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "copying the blobs of "+dir) {
		t.Fatalf("progress on a terminal: %q; want the heading and one rewritten line", progress.String())
	}
	if n := strings.Count(lines[1], "\r\033[K"); n != 5 {
		t.Errorf("the progress line was rewritten %d times, want once per blob (5): %q", n, lines[1])
	}
	if !strings.HasSuffix(lines[1], "5/5 blobs: 5 copied ("+megabytes(int64(5*1000+997*10))+"), 0 already there, 0 failed") {
		t.Errorf("the last progress state: %q", lines[1])
	}
	if !strings.HasPrefix(out.String(), "5 of 5 blobs copied") || strings.Contains(out.String(), "\r") {
		t.Errorf("summary %q", out.String())
	}
}
