package s3store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// MigrateProgress is reported after each blob of a migration.
type MigrateProgress struct {
	// Key is the blob just handled.
	Key ports.BlobKey
	// Err is why that blob could not be copied, or nil.
	Err error
	// Done of Total blobs are handled: Copied, Skipped (already in the
	// destination) or Failed. Bytes is what was copied so far.
	Done, Total             int
	Copied, Skipped, Failed int
	Bytes                   int64
}

// MigrateResult sums up a migration.
type MigrateResult struct {
	Total, Copied, Skipped, Failed int
	Bytes                          int64
}

// maxListedFailures is how many failed blobs Migrate's error names.
const maxListedFailures = 10

// Migrate copies every blob of from (a directory store, for
// `espmdm blobs migrate --to s3`) into to (a bucket), and can be run again
// at any time: a blob that to holds already with the same size is
// skipped (the key is the content's SHA-256, and to checked it when it was
// put). Each copy streams through to.PutBlob, which checks the content
// against its SHA-256, so a blob that rotted on disk is refused, not
// copied. A blob that fails is reported and the others go on; Migrate
// then returns an error naming the failed blobs. A store that is
// unavailable, or ctx ending, stops it at once. progress, when not nil, is
// called after each blob, from Migrate's goroutine.
func Migrate(ctx context.Context, from, to ports.BlobStore, progress func(MigrateProgress)) (MigrateResult, error) {
	var infos []ports.BlobInfo
	if err := from.ListBlobs(ctx, func(i ports.BlobInfo) error {
		infos = append(infos, i)
		return nil
	}); err != nil {
		return MigrateResult{}, fmt.Errorf("migrate: list the source: %w", err)
	}
	p := MigrateProgress{Total: len(infos)}
	var failed []string
	for _, info := range infos {
		copied, err := migrateOne(ctx, from, to, info)
		if ctx.Err() != nil || errors.Is(err, model.ErrUnavailable) {
			return result(p), fmt.Errorf("migrate: stopped at %s after %d of %d blobs: %w", info.Key, p.Done, p.Total, err)
		}
		p.Key, p.Err = info.Key, err
		p.Done++
		switch {
		case err != nil:
			p.Failed++
			if len(failed) < maxListedFailures {
				failed = append(failed, fmt.Sprintf("%s: %v", info.Key, err))
			}
		case copied:
			p.Copied++
			p.Bytes += info.Size
		default:
			p.Skipped++
		}
		if progress != nil {
			progress(p)
		}
	}
	if p.Failed > 0 {
		more := ""
		if p.Failed > len(failed) {
			more = fmt.Sprintf("; and %d more", p.Failed-len(failed))
		}
		return result(p), fmt.Errorf("migrate: %d of %d blobs were not copied: %s%s", p.Failed, p.Total, strings.Join(failed, "; "), more)
	}
	return result(p), nil
}

func result(p MigrateProgress) MigrateResult {
	return MigrateResult{Total: p.Total, Copied: p.Copied, Skipped: p.Skipped, Failed: p.Failed, Bytes: p.Bytes}
}

// migrateOne copies one blob unless to has it; copied says which.
func migrateOne(ctx context.Context, from, to ports.BlobStore, info ports.BlobInfo) (copied bool, err error) {
	have, err := to.StatBlob(ctx, info.Key)
	switch {
	case err == nil && have.Size == info.Size:
		return false, nil
	case err != nil && !errors.Is(err, model.ErrBlobNotFound):
		return false, err
	}
	src, err := from.OpenBlob(ctx, info.Key)
	if err != nil {
		return false, err
	}
	defer src.Close()
	if _, err := to.PutBlob(ctx, info.Key, src, src.Size(), 0); err != nil {
		return false, err
	}
	return true, nil
}
