package app

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/adapters/s3store"
	"github.com/espmdm/espmdm/ports"
)

// BlobStoreCheckTimeout bounds the start-up check of an S3 bucket (one
// listing, with the client's retries of an endpoint that does not answer).
const BlobStoreCheckTimeout = 30 * time.Second

// OpenBlobStore opens the store BLOB_STORE names: the directory
// FIRMWARE_DIR, or the bucket of the S3_* variables, checked with one
// listing of its prefix, so that a missing bucket, refused credentials or
// an unreachable endpoint is an error here, each with its own message. The
// caller closes the store (io.Closer).
func OpenBlobStore(ctx context.Context, cfg Config) (ports.BlobStore, error) {
	if cfg.BlobStore == "s3" {
		ctx, cancel := context.WithTimeout(ctx, BlobStoreCheckTimeout)
		defer cancel()
		s, err := s3store.New(ctx, cfg.S3)
		if err != nil {
			return nil, fmt.Errorf("blob store (BLOB_STORE=s3): %w", err)
		}
		return s, nil
	}
	s, err := fsstore.New(cfg.FirmwareDir)
	if err != nil {
		return nil, fmt.Errorf("blob store (BLOB_STORE=fs, FIRMWARE_DIR): %w", err)
	}
	return s, nil
}

// closer is what both stores are.
type closer interface{ Close() error }

func newBlobStore(lc fx.Lifecycle, cfg Config, log *zap.Logger) (ports.BlobStore, error) {
	s, err := OpenBlobStore(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	if c, ok := s.(closer); ok {
		lc.Append(fx.StopHook(c.Close))
	}
	if cfg.BlobStore == "s3" {
		log.Info("blob store: S3 bucket", zap.String("endpoint", cfg.S3.Endpoint), zap.String("bucket", cfg.S3.Bucket),
			zap.String("prefix", s.(*s3store.Store).Prefix()))
	} else {
		log.Info("blob store: directory", zap.String("dir", cfg.FirmwareDir))
	}
	return s, nil
}
