package blobcheck_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/espmdm/espmdm/adapters/internal/blobcheck"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

func keyOf(b []byte) ports.BlobKey {
	sum := sha256.Sum256(b)
	return ports.BlobKey{Kind: ports.BlobFirmware, Namespace: "m", SHA256: hex.EncodeToString(sum[:])}
}

// collect reads r as a store would and returns what it was given before
// the first error.
func collect(r io.Reader) ([]byte, error) {
	var out bytes.Buffer
	_, err := io.Copy(&out, r)
	return out.Bytes(), err
}

func TestReader(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000) // 16000 bytes
	other := bytes.Repeat([]byte("x"), len(data))
	boom := errors.New("boom")
	for _, c := range []struct {
		name        string
		src         io.Reader
		size, limit int64
		wantErr     func(error) bool
	}{
		{"known size", bytes.NewReader(data), 16000, 0, nil},
		{"unknown size", bytes.NewReader(data), ports.UnknownSize, 0, nil},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(data)), 16000, 16000, nil},
		{"EOF with the last bytes", iotest.DataErrReader(bytes.NewReader(data)), ports.UnknownSize, 0, nil},
		{"wrong digest, known size", bytes.NewReader(other), 16000, 0, isValidation("sha256")},
		{"wrong digest, unknown size", iotest.DataErrReader(bytes.NewReader(other)), ports.UnknownSize, 0, isValidation("sha256")},
		{"longer than declared", bytes.NewReader(append(bytes.Clone(data), '!')), 16000, 0, isValidation("size")},
		{"shorter than declared", bytes.NewReader(data), 16001, 0, is(io.ErrUnexpectedEOF)},
		{"over the limit, unknown size", bytes.NewReader(data), ports.UnknownSize, 15999, is(model.ErrTooLarge)},
		{"declared over the limit", bytes.NewReader(data), 16000, 15999, is(model.ErrTooLarge)},
		{"source fails", io.MultiReader(bytes.NewReader(data[:5000]), iotest.ErrReader(boom)), ports.UnknownSize, 0, is(boom)},
		{"source fails at the declared end", io.MultiReader(bytes.NewReader(data), iotest.ErrReader(boom)), 16000, 0, is(boom)},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := blobcheck.New(t.Context(), c.src, keyOf(data), c.size, c.limit)
			got, err := collect(r)
			if c.wantErr == nil {
				if err != nil || !r.Done() || r.Len() != 16000 || !bytes.Equal(got, data) {
					t.Fatalf("got %d bytes, err %v, Done %v, Len %d; want the 16000 bytes, checked", len(got), err, r.Done(), r.Len())
				}
				return
			}
			if !c.wantErr(err) || !c.wantErr(r.Err()) {
				t.Fatalf("got error %v (Err %v), not the one expected", err, r.Err())
			}
			if r.Done() {
				t.Errorf("Done after a refusal")
			}
			// What was refused never completes: a store that commits at the
			// declared size, or at the content's end, never gets there.
			complete := int64(len(data))
			if c.size >= 0 {
				complete = c.size
			}
			if int64(len(got)) >= complete {
				t.Errorf("the reader gave out %d bytes of refused content, want fewer than %d", len(got), complete)
			}
			if n, again := r.Read(make([]byte, 10)); n != 0 || !errors.Is(again, r.Err()) {
				t.Errorf("Read after the error = %d, %v; want 0 and the same error", n, again)
			}
		})
	}
}

func TestReaderStopsWhenTheContextEnds(t *testing.T) {
	data := make([]byte, 100000)
	ctx, cancel := context.WithCancel(t.Context())
	r := blobcheck.New(ctx, bytes.NewReader(data), keyOf(data), int64(len(data)), 0)
	buf := make([]byte, 1000)
	if _, err := r.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := collect(r); !errors.Is(err, context.Canceled) {
		t.Errorf("after cancel: %v, want context.Canceled", err)
	}
}

func TestEmptyContent(t *testing.T) {
	for _, size := range []int64{0, ports.UnknownSize} {
		r := blobcheck.New(t.Context(), bytes.NewReader(nil), keyOf(nil), size, 0)
		if got, err := collect(r); err != nil || len(got) != 0 || !r.Done() {
			t.Errorf("size %d: got %d bytes, %v, Done %v; want an empty, checked content", size, len(got), err, r.Done())
		}
	}
}

func is(target error) func(error) bool { return func(err error) bool { return errors.Is(err, target) } }

func isValidation(field string) func(error) bool {
	return func(err error) bool {
		var ve *model.ValidationError
		return errors.As(err, &ve) && ve.Field == field
	}
}
