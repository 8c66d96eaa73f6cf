package portstest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// FirmwareStore is an in-memory ports.FirmwareStore.
type FirmwareStore struct {
	// Hook, when set, is called with "Put", "Open" or "DeleteModel" before
	// each operation;
	// a non-nil result fails the operation with that error. Set it before
	// use.
	Hook func(op string) error

	mu    sync.Mutex
	blobs map[string][]byte
}

var _ ports.FirmwareStore = (*FirmwareStore)(nil)

// NewFirmwareStore returns an empty FirmwareStore.
func NewFirmwareStore() *FirmwareStore { return &FirmwareStore{blobs: map[string][]byte{}} }

func blobKey(modelCode, sha256 string) string { return modelCode + "/" + sha256 }

// Len returns how many binaries are stored.
func (s *FirmwareStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.blobs)
}

// Put implements ports.FirmwareStore.
func (s *FirmwareStore) Put(_ context.Context, modelCode, sha256 string, data []byte) error {
	if s.Hook != nil {
		if err := s.Hook("Put"); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[blobKey(modelCode, sha256)] = bytes.Clone(data)
	return nil
}

// Open implements ports.FirmwareStore.
func (s *FirmwareStore) Open(_ context.Context, modelCode, sha256 string) (ports.Blob, error) {
	if s.Hook != nil {
		if err := s.Hook("Open"); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.blobs[blobKey(modelCode, sha256)]
	if !ok {
		return nil, fmt.Errorf("firmware %s of %s: %w", sha256, modelCode, model.ErrNotFound)
	}
	return &blob{Reader: bytes.NewReader(b)}, nil
}

// DeleteModel implements ports.FirmwareStore.
func (s *FirmwareStore) DeleteModel(_ context.Context, modelCode string) error {
	if s.Hook != nil {
		if err := s.Hook("DeleteModel"); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.blobs {
		if strings.HasPrefix(k, modelCode+"/") {
			delete(s.blobs, k)
		}
	}
	return nil
}

type blob struct {
	*bytes.Reader
}

func (b *blob) Close() error { return nil }
