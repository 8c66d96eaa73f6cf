package portstest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// BlobStore is an in-memory ports.BlobStore. PutBlob reads the whole
// content before it checks and stores it, which is as good as streaming
// for a fake.
type BlobStore struct {
	// Hook, when set, is called with the method's name ("PutBlob",
	// "StatBlob", "OpenBlob", "DeleteBlob", "DeleteNamespace", "ListBlobs",
	// "Ping") before each call; a non-nil result fails the call with that
	// error (a *model.UnavailableError plays a store that is down). Set it
	// before use.
	Hook func(op string) error

	mu    sync.Mutex
	blobs map[ports.BlobKey][]byte
}

var _ ports.BlobStore = (*BlobStore)(nil)

// NewBlobStore returns an empty BlobStore.
func NewBlobStore() *BlobStore { return &BlobStore{blobs: map[ports.BlobKey][]byte{}} }

// Len returns how many blobs are stored.
func (s *BlobStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.blobs)
}

func (s *BlobStore) hook(op string) error {
	if s.Hook == nil {
		return nil
	}
	return s.Hook(op)
}

// PutBlob implements ports.BlobStore.
func (s *BlobStore) PutBlob(ctx context.Context, key ports.BlobKey, r io.Reader, size, limit int64) (ports.BlobInfo, error) {
	if err := key.Validate(); err != nil {
		return ports.BlobInfo{}, err
	}
	if err := s.hook("PutBlob"); err != nil {
		return ports.BlobInfo{}, err
	}
	if limit > 0 && size > limit {
		return ports.BlobInfo{}, fmt.Errorf("blob of %d bytes, limit %d: %w", size, limit, model.ErrTooLarge)
	}
	var buf bytes.Buffer
	src := r
	if limit > 0 {
		src = io.LimitReader(r, limit+1)
	}
	if _, err := io.Copy(&buf, ctxReader{ctx, src}); err != nil {
		return ports.BlobInfo{}, fmt.Errorf("reading the content: %w", err)
	}
	data := buf.Bytes()
	switch n := int64(len(data)); {
	case limit > 0 && n > limit:
		return ports.BlobInfo{}, fmt.Errorf("the content is larger than %d bytes: %w", limit, model.ErrTooLarge)
	case size >= 0 && n < size:
		return ports.BlobInfo{}, fmt.Errorf("the content ended after %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	case size >= 0 && n > size:
		return ports.BlobInfo{}, model.Invalid("size", "the content is longer than its declared %d bytes", size)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != key.SHA256 {
		return ports.BlobInfo{}, model.Invalid("sha256", "the content does not hash to the key")
	}
	if err := ctx.Err(); err != nil {
		return ports.BlobInfo{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[key] = bytes.Clone(data)
	return ports.BlobInfo{Key: key, Size: int64(len(data)), ETag: key.ETag()}, nil
}

// ctxReader fails reads once its context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (s *BlobStore) get(key ports.BlobKey) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[key]
	if !ok {
		return nil, fmt.Errorf("%s: %w", key, model.ErrBlobNotFound)
	}
	return b, nil
}

// StatBlob implements ports.BlobStore.
func (s *BlobStore) StatBlob(_ context.Context, key ports.BlobKey) (ports.BlobInfo, error) {
	if err := key.Validate(); err != nil {
		return ports.BlobInfo{}, err
	}
	if err := s.hook("StatBlob"); err != nil {
		return ports.BlobInfo{}, err
	}
	b, err := s.get(key)
	if err != nil {
		return ports.BlobInfo{}, err
	}
	return ports.BlobInfo{Key: key, Size: int64(len(b)), ETag: key.ETag()}, nil
}

// OpenBlob implements ports.BlobStore.
func (s *BlobStore) OpenBlob(_ context.Context, key ports.BlobKey) (ports.Blob, error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	if err := s.hook("OpenBlob"); err != nil {
		return nil, err
	}
	b, err := s.get(key)
	if err != nil {
		return nil, err
	}
	return &blob{Reader: bytes.NewReader(b)}, nil // stored slices are never modified
}

// DeleteBlob implements ports.BlobStore.
func (s *BlobStore) DeleteBlob(_ context.Context, key ports.BlobKey) error {
	if err := key.Validate(); err != nil {
		return err
	}
	if err := s.hook("DeleteBlob"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.blobs, key)
	return nil
}

// DeleteNamespace implements ports.BlobStore.
func (s *BlobStore) DeleteNamespace(_ context.Context, namespace string) error {
	if !ports.BlobNamespacePattern.MatchString(namespace) {
		return model.Invalid("namespace", "must match %s", ports.BlobNamespacePattern)
	}
	if err := s.hook("DeleteNamespace"); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.blobs {
		if k.Namespace == namespace {
			delete(s.blobs, k)
		}
	}
	return nil
}

// ListBlobs implements ports.BlobStore. fn runs without the store's lock.
func (s *BlobStore) ListBlobs(_ context.Context, fn func(ports.BlobInfo) error) error {
	if err := s.hook("ListBlobs"); err != nil {
		return err
	}
	s.mu.Lock()
	infos := make([]ports.BlobInfo, 0, len(s.blobs))
	for k, b := range s.blobs {
		infos = append(infos, ports.BlobInfo{Key: k, Size: int64(len(b)), ETag: k.ETag()})
	}
	s.mu.Unlock()
	for _, info := range infos {
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Ping implements ports.BlobStore.
func (s *BlobStore) Ping(context.Context) error { return s.hook("Ping") }

// blob is an open in-memory blob.
type blob struct {
	*bytes.Reader
}

func (b *blob) Close() error { return nil }
