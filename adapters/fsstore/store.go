// Package fsstore implements ports.BlobStore on the local filesystem
// (BLOB_STORE=fs, the default): each blob is
// FIRMWARE_DIR/<namespace>/<sha256>.bin (".elf", ".core": ports.BlobKey's
// Path), so a firmware binary is FIRMWARE_DIR/<model_code>/<sha256>.bin as
// it always was. A blob is written atomically (a temporary file in the
// same directory, checked while it streams, fsync, rename, fsync of the
// directory), so a reader sees either nothing or the whole file.
//
// New also deletes temporary files an interrupted PutBlob left behind (older
// than an hour).
//
// Namespaces and digests are checked against strict patterns before they
// become path elements, and every file operation goes through an os.Root
// opened on the store directory, so neither "../" nor a planted symlink
// can reach outside it.
package fsstore

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/espmdm/espmdm/ports"
)

// Store is a BlobStore in one directory. It is safe for concurrent use.
type Store struct {
	root *os.Root
}

var _ ports.BlobStore = (*Store)(nil)

const (
	dirPerm  = 0o750
	filePerm = 0o640
	tmpStart = ".upload-"
)

// New opens (creating it when missing) the store directory dir.
func New(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("fsstore: empty firmware directory")
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("fsstore: create firmware directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("fsstore: open firmware directory: %w", err)
	}
	s := &Store{root: root}
	s.removeStaleTemps(time.Now().Add(-staleTempAge))
	return s, nil
}

// staleTempAge is how old a temporary file must be before New deletes it
// as the leftover of an interrupted PutBlob.
const staleTempAge = time.Hour

// removeStaleTemps deletes temporary files older than cutoff from the model
// directories, best effort: a failure here costs disk space, not
// correctness.
func (s *Store) removeStaleTemps(cutoff time.Time) {
	dirs, err := fs.ReadDir(s.root.FS(), ".")
	if err != nil {
		return
	}
	for _, d := range dirs {
		if !d.IsDir() || !ports.BlobNamespacePattern.MatchString(d.Name()) {
			continue
		}
		files, err := fs.ReadDir(s.root.FS(), d.Name())
		if err != nil {
			continue
		}
		for _, f := range files {
			if !f.Type().IsRegular() || !strings.HasPrefix(f.Name(), tmpStart) || !strings.HasSuffix(f.Name(), ".tmp") {
				continue
			}
			if fi, err := f.Info(); err == nil && fi.ModTime().Before(cutoff) {
				_ = s.root.Remove(path.Join(d.Name(), f.Name()))
			}
		}
	}
}

// Dir is the store directory.
func (s *Store) Dir() string { return s.root.Name() }

// Close releases the store directory.
func (s *Store) Close() error { return s.root.Close() }

// ensureDir creates the model directory; a new directory's entry is made
// durable by syncing the store directory.
func (s *Store) ensureDir(dir string) error {
	err := s.root.Mkdir(dir, dirPerm)
	switch {
	case err == nil:
		return s.syncDir(".")
	case errors.Is(err, fs.ErrExist):
		fi, serr := s.root.Lstat(dir)
		if serr != nil {
			return fmt.Errorf("fsstore: stat %s: %w", dir, serr)
		}
		if !fi.IsDir() {
			return fmt.Errorf("fsstore: %s exists and is not a directory", dir)
		}
		return nil
	default:
		return fmt.Errorf("fsstore: create %s: %w", dir, err)
	}
}

// createTemp creates a new, exclusively owned temporary file in dir.
func (s *Store) createTemp(dir string) (string, *os.File, error) {
	for range 10 {
		name := path.Join(dir, tmpStart+rand.Text()+".tmp")
		f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", nil, fmt.Errorf("fsstore: create temporary file in %s: %w", dir, err)
		}
		return name, f, nil
	}
	return "", nil, fmt.Errorf("fsstore: create temporary file in %s: names keep colliding", dir)
}

func (s *Store) syncDir(dir string) error {
	d, err := s.root.Open(dir)
	if err != nil {
		return fmt.Errorf("fsstore: open %s for sync: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsstore: sync directory %s: %w", dir, err)
	}
	return nil
}

// blob is an open binary. Files are never modified in place (only replaced
// by rename), so the size taken at open stays true for this handle.
type blob struct {
	*os.File
	size int64
}

func (b *blob) Size() int64 { return b.size }
