// Package blobcheck checks the content of a blob store's PutBlob while it
// streams. Both blob stores (adapters/fsstore, adapters/s3store) write
// through it, so they refuse the same content in the same way.
package blobcheck

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Reader passes the content of a PutBlob through, counting and hashing
// it. It holds back the bytes that complete the content (the read that
// reaches the declared size, or the source's EOF) until the digest and the
// size have been checked: a store that writes what it reads and commits at
// EOF, or when the declared size has arrived, therefore never commits
// refused content. Its first error sticks: every later Read returns it.
type Reader struct {
	ctx         context.Context
	src         io.Reader
	want        string
	size, limit int64

	h    hash.Hash
	n    int64
	err  error
	done bool
}

// New checks src against key.SHA256, the declared size (or
// ports.UnknownSize) and limit (none when not positive). A known size above
// the limit is refused at once: Err returns model.ErrTooLarge before any
// read.
func New(ctx context.Context, src io.Reader, key ports.BlobKey, size, limit int64) *Reader {
	r := &Reader{ctx: ctx, src: src, want: key.SHA256, size: size, limit: limit, h: sha256.New()}
	if size < 0 {
		r.size = ports.UnknownSize
	}
	if limit > 0 && size > limit {
		r.err = tooLarge(limit)
	}
	return r
}

func tooLarge(limit int64) error {
	return fmt.Errorf("the content is larger than %d bytes: %w", limit, model.ErrTooLarge)
}

// Err is the error that stopped the content (from the source, ctx, or a
// check), or nil.
func (r *Reader) Err() error { return r.err }

// Done reports whether the whole content passed every check.
func (r *Reader) Done() bool { return r.done }

// Len is how many bytes of content were read.
func (r *Reader) Len() int64 { return r.n }

func (r *Reader) fail(err error) (int, error) {
	r.err = err
	return 0, err
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	switch {
	case r.err != nil:
		return 0, r.err
	case r.done:
		return 0, io.EOF
	}
	if err := r.ctx.Err(); err != nil {
		return r.fail(err)
	}
	if r.size >= 0 {
		if r.n == r.size { // empty content: nothing to read but the end
			return r.finish(0)
		}
		if rest := r.size - r.n; int64(len(p)) > rest {
			p = p[:rest]
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := r.src.Read(p)
	r.n += int64(n)
	if r.limit > 0 && r.n > r.limit {
		return r.fail(tooLarge(r.limit))
	}
	r.h.Write(p[:n])
	switch {
	case errors.Is(err, io.EOF):
		if r.size >= 0 && r.n < r.size {
			return r.fail(fmt.Errorf("the content ended after %d of its %d bytes: %w", r.n, r.size, io.ErrUnexpectedEOF))
		}
		n, err := r.verify(n)
		if err == nil {
			err = io.EOF
		}
		return n, err
	case err != nil:
		return r.fail(fmt.Errorf("reading the content: %w", err))
	case r.size >= 0 && r.n == r.size:
		return r.finish(n)
	}
	return n, nil
}

// finish ends content of a declared size once all of it was read: nothing
// may follow, and the digest must match, before the last n bytes go out.
func (r *Reader) finish(n int) (int, error) {
	var one [1]byte
	for range 100 { // a source may return 0, nil a few times
		m, err := r.src.Read(one[:])
		switch {
		case m > 0:
			return r.fail(model.Invalid("size", "the content is longer than its declared %d bytes", r.size))
		case errors.Is(err, io.EOF):
			return r.verify(n)
		case err != nil:
			return r.fail(fmt.Errorf("reading the content: %w", err))
		}
	}
	return r.fail(fmt.Errorf("reading the content: %w", io.ErrNoProgress))
}

func (r *Reader) verify(n int) (int, error) {
	if got := hex.EncodeToString(r.h.Sum(nil)); got != r.want {
		return r.fail(model.Invalid("sha256", "the content's SHA-256 is %s, not %s", got, r.want))
	}
	r.done = true
	return n, nil
}
