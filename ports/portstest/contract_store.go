package portstest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"testing"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// RunFirmwareStoreContract runs the contract of ports.FirmwareStore against
// the stores newStore returns (once per subtest). Model codes are unique
// per subtest.
func RunFirmwareStoreContract(t *testing.T, newStore func(t *testing.T) ports.FirmwareStore) {
	t.Helper()
	blob := func(n int) ([]byte, string) {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		sum := sha256.Sum256(b)
		return b, hex.EncodeToString(sum[:])
	}

	t.Run("Put then Open returns the content, seekable, with its size", func(t *testing.T) {
		s := newStore(t)
		code := UniqueCode("ct_fs")
		data, sum := blob(70000)
		mustNoErr(t, "Put", s.Put(t.Context(), code, sum, data))
		b, err := s.Open(t.Context(), code, sum)
		mustNoErr(t, "Open", err)
		defer b.Close()
		if b.Size() != int64(len(data)) {
			t.Errorf("Size() = %d, want %d", b.Size(), len(data))
		}
		got, err := io.ReadAll(b)
		mustNoErr(t, "ReadAll", err)
		if !bytes.Equal(got, data) {
			t.Fatalf("content differs: got %d bytes, want %d", len(got), len(data))
		}
		off, err := b.Seek(1000, io.SeekStart)
		mustNoErr(t, "Seek", err)
		if off != 1000 {
			t.Errorf("Seek returned %d, want 1000", off)
		}
		part := make([]byte, 16)
		_, err = io.ReadFull(b, part)
		mustNoErr(t, "ReadFull after Seek", err)
		if !bytes.Equal(part, data[1000:1016]) {
			t.Errorf("read after Seek: got %x, want %x", part, data[1000:1016])
		}
		end, err := b.Seek(0, io.SeekEnd)
		mustNoErr(t, "Seek(end)", err)
		if end != int64(len(data)) {
			t.Errorf("Seek(0, SeekEnd) = %d, want %d", end, len(data))
		}
	})

	t.Run("Put of the same content again succeeds", func(t *testing.T) {
		s := newStore(t)
		code := UniqueCode("ct_fs")
		data, sum := blob(1024)
		mustNoErr(t, "Put", s.Put(t.Context(), code, sum, data))
		mustNoErr(t, "Put(again)", s.Put(t.Context(), code, sum, data))
		b, err := s.Open(t.Context(), code, sum)
		mustNoErr(t, "Open", err)
		defer b.Close()
		got, err := io.ReadAll(b)
		mustNoErr(t, "ReadAll", err)
		if !bytes.Equal(got, data) {
			t.Errorf("content differs after a second Put")
		}
	})

	t.Run("binaries are addressed by model code and digest", func(t *testing.T) {
		s := newStore(t)
		codeA, codeB := UniqueCode("ct_fs_a"), UniqueCode("ct_fs_b")
		a, sumA := blob(100)
		b, sumB := blob(200)
		mustNoErr(t, "Put A", s.Put(t.Context(), codeA, sumA, a))
		mustNoErr(t, "Put B", s.Put(t.Context(), codeA, sumB, b))
		for _, c := range []struct {
			code, sum string
			want      []byte
		}{{codeA, sumA, a}, {codeA, sumB, b}} {
			r, err := s.Open(t.Context(), c.code, c.sum)
			mustNoErr(t, "Open", err)
			got, err := io.ReadAll(r)
			r.Close()
			mustNoErr(t, "ReadAll", err)
			if !bytes.Equal(got, c.want) {
				t.Errorf("Open(%s, %s): wrong content", c.code, c.sum)
			}
		}
		_, err := s.Open(t.Context(), codeB, sumA)
		wantErrIs(t, "Open(other model)", err, model.ErrNotFound)
		_, missing := blob(10)
		_, err = s.Open(t.Context(), codeA, missing)
		wantErrIs(t, "Open(unknown digest)", err, model.ErrNotFound)
	})

	t.Run("DeleteModel removes that model's binaries only", func(t *testing.T) {
		s := newStore(t)
		gone, kept := UniqueCode("ct_fs_gone"), UniqueCode("ct_fs_kept")
		a, sumA := blob(100)
		b, sumB := blob(200)
		mustNoErr(t, "Put", s.Put(t.Context(), gone, sumA, a))
		mustNoErr(t, "Put", s.Put(t.Context(), gone, sumB, b))
		mustNoErr(t, "Put", s.Put(t.Context(), kept, sumA, a))
		mustNoErr(t, "DeleteModel", s.DeleteModel(t.Context(), gone))
		for _, sum := range []string{sumA, sumB} {
			_, err := s.Open(t.Context(), gone, sum)
			wantErrIs(t, "Open after DeleteModel", err, model.ErrNotFound)
		}
		r, err := s.Open(t.Context(), kept, sumA)
		mustNoErr(t, "Open(other model)", err)
		r.Close()
		mustNoErr(t, "DeleteModel(again)", s.DeleteModel(t.Context(), gone))
		mustNoErr(t, "DeleteModel(never stored)", s.DeleteModel(t.Context(), UniqueCode("ct_fs_none")))
		// The code is usable again.
		mustNoErr(t, "Put after DeleteModel", s.Put(t.Context(), gone, sumB, b))
		r, err = s.Open(t.Context(), gone, sumB)
		mustNoErr(t, "Open after Put", err)
		r.Close()
	})
}

// RunSecretBoxContract runs the contract of ports.SecretBox against the box
// newBox returns.
func RunSecretBoxContract(t *testing.T, newBox func(t *testing.T) ports.SecretBox) {
	t.Helper()
	t.Run("Seal then Open round-trips and hides the plaintext", func(t *testing.T) {
		box := newBox(t)
		for _, plain := range [][]byte{[]byte("s3cr3t-client-secret-value"), {}, bytes.Repeat([]byte{0}, 100)} {
			sealed, err := box.Seal(plain)
			mustNoErr(t, "Seal", err)
			if len(plain) > 4 && bytes.Contains(sealed, plain) {
				t.Errorf("sealed value contains the plaintext")
			}
			again, err := box.Seal(plain)
			mustNoErr(t, "Seal(again)", err)
			if bytes.Equal(sealed, again) {
				t.Errorf("two seals of the same plaintext are identical (nonce reuse?)")
			}
			got, err := box.Open(sealed)
			mustNoErr(t, "Open", err)
			if !bytes.Equal(got, plain) {
				t.Errorf("Open(Seal(%q)) = %q", plain, got)
			}
		}
	})
	t.Run("Open refuses tampered or garbage input", func(t *testing.T) {
		box := newBox(t)
		sealed, err := box.Seal([]byte("secret"))
		mustNoErr(t, "Seal", err)
		for i := range sealed {
			bad := bytes.Clone(sealed)
			bad[i] ^= 0x01
			if _, err := box.Open(bad); err == nil {
				t.Fatalf("Open accepted a value with byte %d flipped", i)
			}
		}
		for _, bad := range [][]byte{nil, {1, 2, 3}, sealed[:len(sealed)-1]} {
			if _, err := box.Open(bad); err == nil {
				t.Errorf("Open(%x) succeeded, want an error", bad)
			}
		}
	})
}
