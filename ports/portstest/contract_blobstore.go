package portstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// RunBlobStoreContract runs the contract of ports.BlobStore against the
// stores newStore returns (once per subtest). Namespaces are unique per
// subtest, so a store may hold other blobs.
func RunBlobStoreContract(t *testing.T, newStore func(t *testing.T) ports.BlobStore) {
	t.Helper()

	t.Run("PutBlob then StatBlob and OpenBlob give the content", func(t *testing.T) {
		s := newStore(t)
		ns := UniqueCode("ct_blob")
		for _, n := range []int{0, 1, 70000} {
			data, key := newBlob(ports.BlobFirmware, ns, n)
			info, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), int64(n), 0)
			mustNoErr(t, "PutBlob", err)
			want := ports.BlobInfo{Key: key, Size: int64(n), ETag: `"` + key.SHA256 + `"`}
			if info != want {
				t.Errorf("PutBlob(%d bytes) = %+v, want %+v", n, info, want)
			}
			info, err = s.StatBlob(t.Context(), key)
			mustNoErr(t, "StatBlob", err)
			if info != want {
				t.Errorf("StatBlob(%d bytes) = %+v, want %+v", n, info, want)
			}
			wantContent(t, s, key, data)
		}
	})

	t.Run("PutBlob of a stream of unknown size, in odd chunks", func(t *testing.T) {
		s := newStore(t)
		data, key := newBlob(ports.BlobELF, UniqueCode("ct_blob"), 300001)
		info, err := s.PutBlob(t.Context(), key, iotest.HalfReader(bytes.NewReader(data)), ports.UnknownSize, int64(len(data)))
		mustNoErr(t, "PutBlob", err)
		if info.Size != int64(len(data)) {
			t.Errorf("PutBlob: Size = %d, want %d", info.Size, len(data))
		}
		wantContent(t, s, key, data)
	})

	t.Run("OpenBlob serves ranges: Seek then Read from any offset", func(t *testing.T) {
		s := newStore(t)
		data, key := newBlob(ports.BlobFirmware, UniqueCode("ct_blob"), 200000)
		put(t, s, key, data)
		b, err := s.OpenBlob(t.Context(), key)
		mustNoErr(t, "OpenBlob", err)
		defer b.Close()
		if b.Size() != int64(len(data)) {
			t.Errorf("Size() = %d, want %d", b.Size(), len(data))
		}
		// Read a little, then jump around as Range requests do.
		head := make([]byte, 100)
		_, err = io.ReadFull(b, head)
		mustNoErr(t, "ReadFull(head)", err)
		if !bytes.Equal(head, data[:100]) {
			t.Errorf("first 100 bytes differ")
		}
		for _, c := range []struct {
			off    int64
			whence int
			pos    int64
			n      int64
		}{
			{150000, io.SeekStart, 150000, 1000},
			{-5000, io.SeekCurrent, 146000, 5000},
			{-1, io.SeekEnd, 199999, 1},
			{0, io.SeekStart, 0, 200000},
			{65536, io.SeekStart, 65536, 65536},
			{7, io.SeekCurrent, 131079, 12345},
		} {
			pos, err := b.Seek(c.off, c.whence)
			if err != nil || pos != c.pos {
				t.Fatalf("Seek(%d, %d) = %d, %v; want %d", c.off, c.whence, pos, err, c.pos)
			}
			got, err := io.ReadAll(io.LimitReader(b, c.n)) // what an HTTP range does
			mustNoErr(t, "read after Seek", err)
			if !bytes.Equal(got, data[pos:pos+c.n]) {
				t.Errorf("bytes %d..%d: got %d bytes that differ from the content", pos, pos+c.n-1, len(got))
			}
		}
		if pos, err := b.Seek(0, io.SeekEnd); err != nil || pos != int64(len(data)) {
			t.Errorf("Seek(0, SeekEnd) = %d, %v; want %d", pos, err, len(data))
		}
		if n, err := b.Read(make([]byte, 10)); n != 0 || !errors.Is(err, io.EOF) {
			t.Errorf("Read at the end = %d, %v; want 0, EOF", n, err)
		}
		if _, err := b.Seek(-1, io.SeekStart); err == nil {
			t.Errorf("Seek to a negative offset succeeded")
		}
	})

	t.Run("kinds and namespaces keep equal content apart", func(t *testing.T) {
		s := newStore(t)
		nsA, nsB := UniqueCode("ct_blob_a"), UniqueCode("ct_blob_b")
		data, fw := newBlob(ports.BlobFirmware, nsA, 1000)
		elf := fw
		elf.Kind = ports.BlobELF
		dump := fw
		dump.Kind, dump.Namespace = ports.BlobCoreDump, nsB
		for _, k := range []ports.BlobKey{fw, elf, dump} {
			put(t, s, k, data)
		}
		mustNoErr(t, "DeleteBlob(elf)", s.DeleteBlob(t.Context(), elf))
		wantMissing(t, s, elf)
		wantContent(t, s, fw, data)
		wantContent(t, s, dump, data)
		other := fw
		other.Namespace = nsB
		wantMissing(t, s, other)
	})

	t.Run("a blob that is not stored is ErrBlobNotFound", func(t *testing.T) {
		s := newStore(t)
		_, key := newBlob(ports.BlobCoreDump, UniqueCode("ct_blob"), 10)
		wantMissing(t, s, key)
		mustNoErr(t, "DeleteBlob(missing)", s.DeleteBlob(t.Context(), key))
		mustNoErr(t, "DeleteNamespace(empty)", s.DeleteNamespace(t.Context(), key.Namespace))
	})

	t.Run("content that does not hash to the key is refused and leaves the key as it was", func(t *testing.T) {
		s := newStore(t)
		ns := UniqueCode("ct_blob")
		data, key := newBlob(ports.BlobFirmware, ns, 5000)
		other, _ := newBlob(ports.BlobFirmware, ns, 5000)
		for _, size := range []int64{int64(len(other)), ports.UnknownSize} {
			_, err := s.PutBlob(t.Context(), key, bytes.NewReader(other), size, 0)
			wantValidation(t, fmt.Sprintf("PutBlob(wrong content, size %d)", size), err, "sha256")
			wantMissing(t, s, key)
		}
		put(t, s, key, data)
		_, err := s.PutBlob(t.Context(), key, bytes.NewReader(other), int64(len(other)), 0)
		wantValidation(t, "PutBlob(wrong content over a stored blob)", err, "sha256")
		wantContent(t, s, key, data)
	})

	t.Run("content above the limit is ErrTooLarge and leaves nothing", func(t *testing.T) {
		s := newStore(t)
		data, key := newBlob(ports.BlobCoreDump, UniqueCode("ct_blob"), 70000)
		for _, size := range []int64{int64(len(data)), ports.UnknownSize} {
			_, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), size, 65536)
			wantErrIs(t, fmt.Sprintf("PutBlob(70000 bytes, size %d, limit 65536)", size), err, model.ErrTooLarge)
			wantMissing(t, s, key)
		}
		// Exactly the limit is accepted.
		_, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), ports.UnknownSize, int64(len(data)))
		mustNoErr(t, "PutBlob(at the limit)", err)
	})

	t.Run("content shorter or longer than its declared size is refused and leaves nothing", func(t *testing.T) {
		s := newStore(t)
		data, key := newBlob(ports.BlobFirmware, UniqueCode("ct_blob"), 9000)
		_, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), int64(len(data))+1, 0)
		wantErrIs(t, "PutBlob(declared one byte more)", err, io.ErrUnexpectedEOF)
		wantMissing(t, s, key)
		_, err = s.PutBlob(t.Context(), key, bytes.NewReader(append(bytes.Clone(data), 0)), int64(len(data)), 0)
		wantValidation(t, "PutBlob(one byte more than declared)", err, "size")
		wantMissing(t, s, key)
	})

	t.Run("an interrupted upload leaves nothing visible, during and after", func(t *testing.T) {
		s := newStore(t)
		data, key := newBlob(ports.BlobFirmware, UniqueCode("ct_blob"), 1<<20)
		for _, size := range []int64{int64(len(data)), ports.UnknownSize} {
			src := &stallingReader{r: bytes.NewReader(data), after: 600 << 10, stalled: make(chan struct{}), release: make(chan error)}
			done := make(chan error, 1)
			go func() {
				_, err := s.PutBlob(t.Context(), key, src, size, 0)
				done <- err
			}()
			<-src.stalled // the store has read 600 KiB and waits for more
			wantMissing(t, s, key)
			if listed(t, s, key) {
				t.Errorf("ListBlobs shows %s while its upload is in progress", key)
			}
			src.release <- errInterrupted
			err := <-done
			wantErrIs(t, fmt.Sprintf("PutBlob(source fails, size %d)", size), err, errInterrupted)
			wantMissing(t, s, key)
			if listed(t, s, key) {
				t.Errorf("ListBlobs shows %s after its upload failed", key)
			}
		}
	})

	t.Run("a cancelled upload leaves nothing visible", func(t *testing.T) {
		s := newStore(t)
		data, key := newBlob(ports.BlobELF, UniqueCode("ct_blob"), 1<<20)
		for _, size := range []int64{int64(len(data)), ports.UnknownSize} {
			ctx, cancel := context.WithCancel(t.Context())
			src := &cancellingReader{r: bytes.NewReader(data), after: 300 << 10, cancel: cancel}
			_, err := s.PutBlob(ctx, key, src, size, 0)
			cancel()
			wantErrIs(t, fmt.Sprintf("PutBlob(cancelled mid-stream, size %d)", size), err, context.Canceled)
			wantMissing(t, s, key)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := s.PutBlob(ctx, key, bytes.NewReader(data), int64(len(data)), 0)
		wantErrIs(t, "PutBlob(cancelled before)", err, context.Canceled)
		wantMissing(t, s, key)
	})

	t.Run("concurrent puts of the same blob all succeed; readers see all of it or nothing", func(t *testing.T) {
		s := newStore(t)
		data, key := newBlob(ports.BlobFirmware, UniqueCode("ct_blob"), 512<<10)
		const writers = 6
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for i := range writers {
			size := int64(len(data))
			if i%2 == 1 {
				size = ports.UnknownSize
			}
			wg.Go(func() {
				_, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), size, 0)
				errs <- err
			})
		}
		stop := make(chan struct{})
		var readers sync.WaitGroup
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				b, err := s.OpenBlob(t.Context(), key)
				if errors.Is(err, model.ErrBlobNotFound) {
					continue
				}
				if err != nil {
					t.Errorf("OpenBlob during the puts: %v", err)
					return
				}
				got, err := io.ReadAll(b)
				b.Close()
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("OpenBlob during the puts read %d bytes (%v), want the whole %d-byte content", len(got), err, len(data))
					return
				}
			}
		})
		wg.Wait()
		close(stop)
		readers.Wait()
		close(errs)
		for err := range errs {
			mustNoErr(t, "concurrent PutBlob", err)
		}
		wantContent(t, s, key, data)
	})

	t.Run("DeleteBlob and DeleteNamespace remove what they name only", func(t *testing.T) {
		s := newStore(t)
		gone, kept := UniqueCode("ct_blob_gone"), UniqueCode("ct_blob_kept")
		a, keyA := newBlob(ports.BlobFirmware, gone, 100)
		b, keyB := newBlob(ports.BlobELF, gone, 200)
		c, keyC := newBlob(ports.BlobFirmware, kept, 300)
		for _, x := range []struct {
			k ports.BlobKey
			d []byte
		}{{keyA, a}, {keyB, b}, {keyC, c}} {
			put(t, s, x.k, x.d)
		}
		mustNoErr(t, "DeleteBlob", s.DeleteBlob(t.Context(), keyA))
		wantMissing(t, s, keyA)
		wantContent(t, s, keyB, b)
		mustNoErr(t, "DeleteBlob(again)", s.DeleteBlob(t.Context(), keyA))
		mustNoErr(t, "DeleteNamespace", s.DeleteNamespace(t.Context(), gone))
		wantMissing(t, s, keyB)
		wantContent(t, s, keyC, c)
		mustNoErr(t, "DeleteNamespace(again)", s.DeleteNamespace(t.Context(), gone))
		put(t, s, keyA, a) // the namespace is usable again
		wantContent(t, s, keyA, a)
	})

	t.Run("ListBlobs lists every blob with its size, and stops at fn's error", func(t *testing.T) {
		s := newStore(t)
		ns := UniqueCode("ct_blob")
		want := map[ports.BlobKey]int64{}
		for i, kind := range []ports.BlobKind{ports.BlobFirmware, ports.BlobELF, ports.BlobCoreDump, ports.BlobFirmware} {
			data, key := newBlob(kind, ns, 1000+i)
			put(t, s, key, data)
			want[key] = int64(len(data))
		}
		got := map[ports.BlobKey]int64{}
		mustNoErr(t, "ListBlobs", s.ListBlobs(t.Context(), func(info ports.BlobInfo) error {
			if info.ETag != `"`+info.Key.SHA256+`"` {
				t.Errorf("ListBlobs: %s has ETag %s", info.Key, info.ETag)
			}
			if info.Key.Namespace == ns {
				got[info.Key] = info.Size
			}
			return nil
		}))
		if len(got) != len(want) {
			t.Errorf("ListBlobs gave %d blobs of the namespace, want %d", len(got), len(want))
		}
		for k, n := range want {
			if got[k] != n {
				t.Errorf("ListBlobs: %s has size %d, want %d", k, got[k], n)
			}
		}
		errStop := errors.New("stop")
		calls := 0
		err := s.ListBlobs(t.Context(), func(ports.BlobInfo) error { calls++; return errStop })
		wantErrIs(t, "ListBlobs(fn fails)", err, errStop)
		if calls != 1 {
			t.Errorf("ListBlobs called fn %d times after its error, want 1", calls)
		}
	})

	t.Run("keys that cannot address a blob are refused by every method", func(t *testing.T) {
		s := newStore(t)
		data, good := newBlob(ports.BlobFirmware, UniqueCode("ct_blob"), 10)
		bad := []ports.BlobKey{
			{Kind: "image", Namespace: good.Namespace, SHA256: good.SHA256},
			{Kind: ports.BlobFirmware, Namespace: "../escape", SHA256: good.SHA256},
			{Kind: ports.BlobFirmware, Namespace: "", SHA256: good.SHA256},
			{Kind: ports.BlobFirmware, Namespace: "a/b", SHA256: good.SHA256},
			{Kind: ports.BlobFirmware, Namespace: good.Namespace, SHA256: "ABCDEF" + good.SHA256[6:]},
			{Kind: ports.BlobFirmware, Namespace: good.Namespace, SHA256: good.SHA256[:63]},
			{Kind: ports.BlobFirmware, Namespace: good.Namespace, SHA256: "../" + good.SHA256[3:]},
		}
		for _, k := range bad {
			var ve *model.ValidationError
			if _, err := s.PutBlob(t.Context(), k, bytes.NewReader(data), int64(len(data)), 0); !errors.As(err, &ve) {
				t.Errorf("PutBlob(%+v): got %v, want a *model.ValidationError", k, err)
			}
			if _, err := s.StatBlob(t.Context(), k); !errors.As(err, &ve) {
				t.Errorf("StatBlob(%+v): got %v, want a *model.ValidationError", k, err)
			}
			if _, err := s.OpenBlob(t.Context(), k); !errors.As(err, &ve) {
				t.Errorf("OpenBlob(%+v): got %v, want a *model.ValidationError", k, err)
			}
			if err := s.DeleteBlob(t.Context(), k); !errors.As(err, &ve) {
				t.Errorf("DeleteBlob(%+v): got %v, want a *model.ValidationError", k, err)
			}
		}
		for _, ns := range []string{"", "..", "a/b", "UPPER"} {
			var ve *model.ValidationError
			if err := s.DeleteNamespace(t.Context(), ns); !errors.As(err, &ve) {
				t.Errorf("DeleteNamespace(%q): got %v, want a *model.ValidationError", ns, err)
			}
		}
	})

	t.Run("Ping answers", func(t *testing.T) {
		mustNoErr(t, "Ping", newStore(t).Ping(t.Context()))
	})
}

var errInterrupted = errors.New("the client went away")

// newBlob returns n random bytes and their key.
func newBlob(kind ports.BlobKind, ns string, n int) ([]byte, ports.BlobKey) {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return b, ports.BlobKey{Kind: kind, Namespace: ns, SHA256: hex.EncodeToString(sum[:])}
}

func put(t *testing.T, s ports.BlobStore, key ports.BlobKey, data []byte) {
	t.Helper()
	if _, err := s.PutBlob(t.Context(), key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
		t.Fatalf("PutBlob(%s): %v", key, err)
	}
}

func wantContent(t *testing.T, s ports.BlobStore, key ports.BlobKey, data []byte) {
	t.Helper()
	b, err := s.OpenBlob(t.Context(), key)
	if err != nil {
		t.Fatalf("OpenBlob(%s): %v", key, err)
	}
	defer b.Close()
	if b.Size() != int64(len(data)) {
		t.Errorf("OpenBlob(%s): Size() = %d, want %d", key, b.Size(), len(data))
	}
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("reading %s: %v", key, err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("%s: read %d bytes that differ from the %d stored", key, len(got), len(data))
	}
}

func wantMissing(t *testing.T, s ports.BlobStore, key ports.BlobKey) {
	t.Helper()
	_, err := s.StatBlob(t.Context(), key)
	wantErrIs(t, "StatBlob("+key.String()+")", err, model.ErrBlobNotFound)
	wantErrIs(t, "StatBlob("+key.String()+")", err, model.ErrNotFound)
	b, err := s.OpenBlob(t.Context(), key)
	if err == nil {
		b.Close()
	}
	wantErrIs(t, "OpenBlob("+key.String()+")", err, model.ErrBlobNotFound)
}

func wantValidation(t *testing.T, what string, err error, field string) {
	t.Helper()
	var ve *model.ValidationError
	if !errors.As(err, &ve) || ve.Field != field {
		t.Errorf("%s: got %v, want a *model.ValidationError on %s", what, err, field)
	}
}

// listed reports whether ListBlobs shows key.
func listed(t *testing.T, s ports.BlobStore, key ports.BlobKey) bool {
	t.Helper()
	found := false
	mustNoErr(t, "ListBlobs", s.ListBlobs(t.Context(), func(info ports.BlobInfo) error {
		found = found || info.Key == key
		return nil
	}))
	return found
}

// stallingReader yields its first `after` bytes, then closes stalled and
// waits for the error to end with.
type stallingReader struct {
	r       io.Reader
	after   int
	stalled chan struct{}
	release chan error
}

func (s *stallingReader) Read(p []byte) (int, error) {
	if s.after <= 0 {
		close(s.stalled)
		return 0, <-s.release
	}
	if len(p) > s.after {
		p = p[:s.after]
	}
	n, err := s.r.Read(p)
	s.after -= n
	return n, err
}

// cancellingReader cancels its context once `after` bytes went through,
// and goes on yielding.
type cancellingReader struct {
	r      io.Reader
	after  int
	cancel context.CancelFunc
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.after -= n
	if c.after <= 0 {
		c.cancel()
	}
	return n, err
}
