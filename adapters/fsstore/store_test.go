package fsstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func newStore(t *testing.T) (*fsstore.Store, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "firmware")
	s, err := fsstore.New(dir)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, dir
}

func blob(t *testing.T, n int) ([]byte, string) {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// firmware is the blob key of a model's firmware binary, as the core
// makes it.
func firmware(code, sum string) ports.BlobKey {
	return ports.BlobKey{Kind: ports.BlobFirmware, Namespace: code, SHA256: sum}
}

// put puts a firmware binary of the model.
func put(ctx context.Context, s *fsstore.Store, code, sum string, data []byte) error {
	_, err := s.PutBlob(ctx, firmware(code, sum), bytes.NewReader(data), int64(len(data)), 0)
	return err
}

func TestPutLayoutAndNoLeftovers(t *testing.T) {
	s, dir := newStore(t)
	data, sum := blob(t, 5000)
	if err := put(t.Context(), s, "esp32_dev", sum, data); err != nil {
		t.Fatalf("Put: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "esp32_dev", sum+".bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file at FIRMWARE_DIR/<code>/<sha256>.bin: %d bytes, %v; want the %d bytes put", len(got), err, len(data))
	}
	entries, err := os.ReadDir(filepath.Join(dir, "esp32_dev"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("model directory holds %v, want only the binary (no temporary files)", names)
	}
}

func TestPutRefusesContentThatDoesNotMatchItsDigest(t *testing.T) {
	s, dir := newStore(t)
	data, _ := blob(t, 100)
	_, other := blob(t, 100)
	err := put(t.Context(), s, "m1", other, data)
	var ve *model.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Put with a wrong digest: got %v, want a *model.ValidationError", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "m1", other+".bin")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused Put left a file behind (stat: %v)", err)
	}
}

// Readers racing a writer of the same binary see the whole file or none.
func TestPutIsAtomicForConcurrentReaders(t *testing.T) {
	s, _ := newStore(t)
	data, sum := blob(t, 4<<20)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var opened, partial atomic.Int64
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				b, err := s.OpenBlob(t.Context(), firmware("atomic", sum))
				if errors.Is(err, model.ErrNotFound) {
					continue
				}
				if err != nil {
					t.Errorf("Open: %v", err)
					return
				}
				got, err := io.ReadAll(b)
				size := b.Size()
				b.Close()
				if err != nil {
					t.Errorf("ReadAll: %v", err)
					return
				}
				opened.Add(1)
				if size != int64(len(data)) || !bytes.Equal(got, data) {
					partial.Add(1)
				}
			}
		})
	}
	for range 20 {
		if err := put(t.Context(), s, "atomic", sum, data); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	// Let the readers see the final file a few times too.
	for deadline := time.Now().Add(5 * time.Second); opened.Load() < 20 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if n := partial.Load(); n > 0 {
		t.Errorf("%d of %d reads saw a partial or wrong file", n, opened.Load())
	}
}

func TestOpenSeekAndSize(t *testing.T) {
	s, _ := newStore(t)
	data, sum := blob(t, 10000)
	if err := put(t.Context(), s, "seek", sum, data); err != nil {
		t.Fatal(err)
	}
	b, err := s.OpenBlob(t.Context(), firmware("seek", sum))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Size() != 10000 {
		t.Errorf("Size() = %d, want 10000", b.Size())
	}
	for _, c := range []struct {
		off    int64
		whence int
		want   int64
	}{{-100, io.SeekEnd, 9900}, {50, io.SeekCurrent, 9950}, {3, io.SeekStart, 3}} {
		pos, err := b.Seek(c.off, c.whence)
		if err != nil || pos != c.want {
			t.Fatalf("Seek(%d, %d) = %d, %v; want %d", c.off, c.whence, pos, err, c.want)
		}
		buf := make([]byte, 10)
		n, err := io.ReadFull(b, buf)
		if err != nil || !bytes.Equal(buf[:n], data[pos:pos+10]) {
			t.Errorf("read at %d: got %x, %v; want %x", pos, buf[:n], err, data[pos:pos+10])
		}
		_, _ = b.Seek(-10, io.SeekCurrent)
	}
}

func TestTraversalRejected(t *testing.T) {
	s, dir := newStore(t)
	data, sum := blob(t, 10)
	outside := filepath.Dir(dir)
	for _, c := range []struct{ code, sum string }{
		{"../escape", sum},
		{"..", sum},
		{"a/b", sum},
		{"", sum},
		{"UPPER", sum},
		{"ok", "../../" + sum[6:]},
		{"ok", strings.ToUpper(sum)},
		{"ok", sum[:63]},
		{"ok", sum + "/x"},
		{"ok\x00", sum},
		{strings.Repeat("a", 51), sum},
	} {
		var ve *model.ValidationError
		if err := put(t.Context(), s, c.code, c.sum, data); !errors.As(err, &ve) {
			t.Errorf("Put(%q, %q): got %v, want a *model.ValidationError", c.code, c.sum, err)
		}
		if _, err := s.OpenBlob(t.Context(), firmware(c.code, c.sum)); !errors.As(err, &ve) {
			t.Errorf("Open(%q, %q): got %v, want a *model.ValidationError", c.code, c.sum, err)
		}
	}
	entries, _ := os.ReadDir(outside)
	for _, e := range entries {
		if e.Name() != filepath.Base(dir) {
			t.Errorf("something was written next to the store: %s", e.Name())
		}
	}

	// A model directory planted as a symlink out of the store is not
	// followed.
	target := t.TempDir()
	if err := os.Symlink(target, filepath.Join(dir, "planted")); err != nil {
		t.Fatal(err)
	}
	if err := put(t.Context(), s, "planted", sum, data); err == nil {
		t.Errorf("Put through a symlink out of the store succeeded")
	}
	if entries, _ := os.ReadDir(target); len(entries) != 0 {
		t.Errorf("Put wrote %d entries outside the store", len(entries))
	}
	if err := os.WriteFile(filepath.Join(target, sum+".bin"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := s.OpenBlob(t.Context(), firmware("planted", sum)); err == nil {
		b.Close()
		t.Errorf("Open through a symlink out of the store succeeded")
	}
}

func TestPutHonoursCancelledContext(t *testing.T) {
	s, dir := newStore(t)
	data, sum := blob(t, 10)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := put(ctx, s, "cancelled", sum, data); err == nil {
		t.Errorf("Put with a cancelled context succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "cancelled", sum+".bin")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cancelled Put left a file (stat: %v)", err)
	}
}

func TestNewRefusesAFileAsDirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := fsstore.New(f); err == nil {
		s.Close()
		t.Errorf("New on a regular file succeeded")
	}
	if s, err := fsstore.New(""); err == nil {
		s.Close()
		t.Errorf("New(\"\") succeeded")
	}
}

func TestNewRemovesStaleTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "m1"), 0o750); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	files := map[string]bool{ // name -> should survive
		".upload-OLD.tmp":   false,
		".upload-FRESH.tmp": true,
		"keep.bin":          true,
	}
	for name := range files {
		p := filepath.Join(dir, "m1", name)
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if name != ".upload-FRESH.tmp" {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	s, err := fsstore.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name, survive := range files {
		_, err := os.Stat(filepath.Join(dir, "m1", name))
		if got := err == nil; got != survive {
			t.Errorf("%s: exists %v after New, want %v", name, got, survive)
		}
	}
}

func TestBlobStoreContract(t *testing.T) {
	portstest.RunBlobStoreContract(t, func(t *testing.T) ports.BlobStore {
		s, _ := newStore(t)
		return s
	})
}
