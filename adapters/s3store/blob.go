package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/minio/minio-go/v7"

	"github.com/espmdm/espmdm/ports"
)

// blob reads an object from its current offset with one ranged GET
// (bytes=off-end), opened at the first Read after a Seek: reading through
// costs one request, a Range request two (the HEAD of OpenBlob, the GET).
type blob struct {
	s      *Store
	ctx    context.Context // not the caller's: Close ends it
	cancel context.CancelFunc
	name   string
	size   int64

	off  int64
	body io.ReadCloser // positioned at off, or nil
}

var _ ports.Blob = (*blob)(nil)

func (b *blob) Size() int64 { return b.size }

func (b *blob) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if b.body == nil {
		var opts minio.GetObjectOptions
		if err := opts.SetRange(b.off, b.size-1); err != nil {
			return 0, err
		}
		body, _, _, err := b.s.core.GetObject(b.ctx, b.s.bucket, b.name, opts)
		if err != nil {
			return 0, b.s.fail(b.ctx, "get", b.name, err)
		}
		b.body = body
	}
	if rest := b.size - b.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := b.body.Read(p)
	b.off += int64(n)
	switch {
	case errors.Is(err, io.EOF) && b.off < b.size:
		// The object is shorter than its HEAD said: it was replaced or
		// cut while being read, which a content-addressed store never does.
		return n, fmt.Errorf("s3store: get %s: the object ended at %d of its %d bytes: %w", b.name, b.off, b.size, io.ErrUnexpectedEOF)
	case errors.Is(err, io.EOF):
		return n, io.EOF
	case err != nil:
		return n, b.s.fail(b.ctx, "get", b.name, err)
	}
	return n, nil
}

func (b *blob) Seek(offset int64, whence int) (int64, error) {
	var off int64
	switch whence {
	case io.SeekStart:
		off = offset
	case io.SeekCurrent:
		off = b.off + offset
	case io.SeekEnd:
		off = b.size + offset
	default:
		return 0, errors.New("s3store: Seek: invalid whence")
	}
	if off < 0 {
		return 0, errors.New("s3store: Seek: negative position")
	}
	if off != b.off && b.body != nil {
		_ = b.body.Close()
		b.body = nil
	}
	b.off = off
	return off, nil
}

// Close ends a GET in progress.
func (b *blob) Close() error {
	b.cancel()
	if b.body != nil {
		_ = b.body.Close()
		b.body = nil
	}
	return nil
}
