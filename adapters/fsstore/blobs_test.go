package fsstore_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// The blob layout keeps FIRMWARE_DIR as it was: a firmware blob is the
// file FIRMWARE_DIR/<model code>/<sha256>.bin that espmdm always wrote,
// and the other kinds sit beside it with their own extension.
func TestBlobLayout(t *testing.T) {
	s, dir := newStore(t)
	data, sum := blob(t, 3000)
	if err := put(t.Context(), s, "thermo_v2", sum, data); err != nil {
		t.Fatalf("Put: %v", err)
	}
	fw := ports.BlobKey{Kind: ports.BlobFirmware, Namespace: "thermo_v2", SHA256: sum}
	if info, err := s.StatBlob(t.Context(), fw); err != nil || info.Size != 3000 {
		t.Errorf("StatBlob of a firmware binary = %+v, %v; want its 3000 bytes", info, err)
	}
	for kind, name := range map[ports.BlobKind]string{ports.BlobELF: sum + ".elf", ports.BlobCoreDump: sum + ".core"} {
		key := ports.BlobKey{Kind: kind, Namespace: "thermo_v2", SHA256: sum}
		if _, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
			t.Fatalf("PutBlob(%s): %v", kind, err)
		}
		if got, err := os.ReadFile(filepath.Join(dir, "thermo_v2", name)); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s blob: file thermo_v2/%s holds %d bytes (%v), want the blob", kind, name, len(got), err)
		}
	}
	// DeleteNamespace (a model deleted) takes the model's other blobs too.
	if err := s.DeleteNamespace(t.Context(), "thermo_v2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "thermo_v2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("model directory still there after DeleteNamespace (%v)", err)
	}
}

// ListBlobs shows blobs only: not temporary files of uploads in progress,
// nor anything else someone put in the directory.
func TestListBlobsSkipsWhatIsNoBlob(t *testing.T) {
	s, dir := newStore(t)
	data, sum := blob(t, 100)
	key := ports.BlobKey{Kind: ports.BlobFirmware, Namespace: "m1", SHA256: sum}
	if _, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), 100, 0); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"m1/.upload-ABC.tmp", "m1/" + sum + ".txt", "m1/notes.bin", "README", "Not_A_Namespace/" + sum + ".bin",
		"m1/" + sum[:63] + ".bin",
	} {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "m1", sum+".elf"), 0o750); err != nil { // a directory with a blob's name
		t.Fatal(err)
	}
	var got []ports.BlobInfo
	if err := s.ListBlobs(t.Context(), func(i ports.BlobInfo) error { got = append(got, i); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Key != key || got[0].Size != 100 {
		t.Errorf("ListBlobs = %+v, want only %s (100 bytes)", got, key)
	}
}

// Ping fails when the directory the store opened is gone or replaced (an
// unmounted volume, a directory deleted by hand), as the blob store's
// unavailable error.
func TestPingNoticesTheDirectoryGoing(t *testing.T) {
	for _, replace := range []bool{false, true} {
		s, dir := newStore(t)
		if err := s.Ping(t.Context()); err != nil {
			t.Fatalf("Ping: %v", err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if replace {
			if err := os.Mkdir(dir, 0o750); err != nil {
				t.Fatal(err)
			}
		}
		err := s.Ping(t.Context())
		var ue *model.UnavailableError
		if !errors.As(err, &ue) || ue.Service != model.ServiceBlobStore {
			t.Errorf("Ping with the directory removed (replaced: %v): got %v, want a blobstore *model.UnavailableError", replace, err)
		}
	}
}

func TestOpenBlobOfADirectoryIsUnavailableNotMissing(t *testing.T) {
	s, dir := newStore(t)
	_, sum := blob(t, 10)
	if err := os.MkdirAll(filepath.Join(dir, "m1", sum+".bin"), 0o750); err != nil {
		t.Fatal(err)
	}
	key := ports.BlobKey{Kind: ports.BlobFirmware, Namespace: "m1", SHA256: sum}
	for what, err := range map[string]error{
		"OpenBlob": func() error { _, err := s.OpenBlob(t.Context(), key); return err }(),
		"StatBlob": func() error { _, err := s.StatBlob(t.Context(), key); return err }(),
	} {
		if !errors.Is(err, model.ErrUnavailable) || errors.Is(err, model.ErrNotFound) {
			t.Errorf("%s of a directory: got %v, want ErrUnavailable (not ErrNotFound)", what, err)
		}
	}
}
