package fsstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"

	"github.com/espmdm/espmdm/adapters/internal/blobcheck"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// unavailable wraps a failure of the directory (I/O error, full disk, a
// directory gone) as the blob store's *model.UnavailableError.
func unavailable(format string, args ...any) error {
	return &model.UnavailableError{Service: model.ServiceBlobStore, Err: fmt.Errorf("fsstore: "+format, args...)}
}

// PutBlob implements ports.BlobStore. The content streams into a
// temporary file beside its final name, which it gets (by rename) only
// after every check passed and the file is synced.
func (s *Store) PutBlob(ctx context.Context, key ports.BlobKey, r io.Reader, size, limit int64) (_ ports.BlobInfo, err error) {
	if err := key.Validate(); err != nil {
		return ports.BlobInfo{}, err
	}
	check := blobcheck.New(ctx, r, key, size, limit)
	if err := check.Err(); err != nil {
		return ports.BlobInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ports.BlobInfo{}, err
	}
	dir, file := key.Namespace, key.Path()
	if err := s.ensureDir(dir); err != nil {
		return ports.BlobInfo{}, unavailable("%w", err)
	}
	tmp, f, err := s.createTemp(dir)
	if err != nil {
		return ports.BlobInfo{}, unavailable("%w", err)
	}
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if err != nil {
			_ = s.root.Remove(tmp)
		}
	}()
	if _, err := io.Copy(f, check); err != nil {
		if cerr := check.Err(); cerr != nil {
			return ports.BlobInfo{}, cerr // the content's fault, or the caller's
		}
		return ports.BlobInfo{}, unavailable("write %s: %w", file, err)
	}
	if !check.Done() { // io.Copy ends at EOF, which comes only after the checks
		return ports.BlobInfo{}, fmt.Errorf("fsstore: write %s: the content was not checked to its end", file)
	}
	if err := f.Sync(); err != nil {
		return ports.BlobInfo{}, unavailable("sync %s: %w", file, err)
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return ports.BlobInfo{}, unavailable("close %s: %w", file, cerr)
	}
	if err := ctx.Err(); err != nil {
		return ports.BlobInfo{}, err
	}
	if err := s.root.Rename(tmp, file); err != nil {
		return ports.BlobInfo{}, unavailable("rename into %s: %w", file, err)
	}
	if err := s.syncDir(dir); err != nil {
		return ports.BlobInfo{}, unavailable("%w", err)
	}
	return ports.BlobInfo{Key: key, Size: check.Len(), ETag: key.ETag()}, nil
}

// StatBlob implements ports.BlobStore.
func (s *Store) StatBlob(ctx context.Context, key ports.BlobKey) (ports.BlobInfo, error) {
	if err := key.Validate(); err != nil {
		return ports.BlobInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ports.BlobInfo{}, err
	}
	fi, err := s.root.Stat(key.Path())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ports.BlobInfo{}, fmt.Errorf("fsstore: %s: %w", key, model.ErrBlobNotFound)
	case err != nil:
		return ports.BlobInfo{}, unavailable("stat %s: %w", key, err)
	case !fi.Mode().IsRegular():
		return ports.BlobInfo{}, unavailable("%s is not a regular file", key)
	}
	return ports.BlobInfo{Key: key, Size: fi.Size(), ETag: key.ETag()}, nil
}

// OpenBlob implements ports.BlobStore: the blob is the open file.
func (s *Store) OpenBlob(ctx context.Context, key ports.BlobKey) (ports.Blob, error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	file := key.Path()
	f, err := s.root.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("fsstore: %s: %w", key, model.ErrBlobNotFound)
	}
	if err != nil {
		return nil, unavailable("open %s: %w", file, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, unavailable("stat %s: %w", file, err)
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, unavailable("%s is not a regular file", file)
	}
	return &blob{File: f, size: fi.Size()}, nil
}

// DeleteBlob implements ports.BlobStore.
func (s *Store) DeleteBlob(ctx context.Context, key ports.BlobKey) error {
	if err := key.Validate(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.root.Remove(key.Path())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return unavailable("remove %s: %w", key, err)
	}
	if err := s.syncDir(key.Namespace); err != nil {
		return unavailable("%w", err)
	}
	return nil
}

// DeleteNamespace implements ports.BlobStore: it removes the namespace's
// directory with every blob (and any temporary file) in it.
func (s *Store) DeleteNamespace(ctx context.Context, namespace string) error {
	if !ports.BlobNamespacePattern.MatchString(namespace) {
		return model.Invalid("namespace", "must match %s", ports.BlobNamespacePattern)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.root.RemoveAll(namespace); err != nil {
		return unavailable("remove %s: %w", namespace, err)
	}
	if err := s.syncDir("."); err != nil {
		return unavailable("%w", err)
	}
	return nil
}

// ListBlobs implements ports.BlobStore: it reads the namespace
// directories one by one.
func (s *Store) ListBlobs(ctx context.Context, fn func(ports.BlobInfo) error) error {
	dirs, err := fs.ReadDir(s.root.FS(), ".")
	if err != nil {
		return unavailable("list the store directory: %w", err)
	}
	for _, d := range dirs {
		if !d.IsDir() || !ports.BlobNamespacePattern.MatchString(d.Name()) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		files, err := fs.ReadDir(s.root.FS(), d.Name())
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return unavailable("list %s: %w", d.Name(), err)
		}
		for _, f := range files {
			key, ok := ports.ParseBlobPath(path.Join(d.Name(), f.Name()))
			if !ok || !f.Type().IsRegular() {
				continue
			}
			fi, err := f.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return unavailable("stat %s: %w", key, err)
			}
			if err := fn(ports.BlobInfo{Key: key, Size: fi.Size(), ETag: key.ETag()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Ping implements ports.BlobStore: the directory the store opened must
// still be the one at its path (not removed, nor replaced by another).
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	opened, err := s.root.Stat(".")
	if err != nil {
		return unavailable("stat the store directory: %w", err)
	}
	now, err := os.Stat(s.root.Name())
	if err != nil {
		return unavailable("stat the store directory: %w", err)
	}
	if !os.SameFile(opened, now) {
		return unavailable("%s is no longer the directory the store opened", s.root.Name())
	}
	return nil
}
