package s3store_test

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/ports"
)

// BenchmarkBlobStores compares the S3 store (against the stack's S3Proxy)
// with the filesystem store in the same run, on the same disk: uploads of a
// known and an unknown size, whole downloads, and a 64 KiB range (an OTA
// resume), for a 1 MiB and a 16 MiB (FIRMWARE_MAX_BYTES) blob. MB/s is the
// throughput; for the range it is dominated by the requests' latency.
func BenchmarkBlobStores(b *testing.B) {
	fs, err := fsstore.New(filepath.Join(b.TempDir(), "firmware"))
	if err != nil {
		b.Fatal(err)
	}
	defer fs.Close()
	stores := []struct {
		name string
		s    ports.BlobStore
	}{{"fs", fs}, {"s3", open(b, config(b))}}
	for _, size := range []int{1 << 20, 16 << 20} {
		data, key := newBlob("bench", size)
		for _, st := range stores {
			name := fmt.Sprintf("%s/%dMiB", st.name, size>>20)
			b.Run(name+"/put", func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					if _, err := st.s.PutBlob(b.Context(), key, bytes.NewReader(data), int64(size), 0); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/put-unknown-size", func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					if _, err := st.s.PutBlob(b.Context(), key, io.MultiReader(bytes.NewReader(data)), ports.UnknownSize, 0); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/get", func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					blob, err := st.s.OpenBlob(b.Context(), key)
					if err != nil {
						b.Fatal(err)
					}
					n, err := io.Copy(io.Discard, blob)
					blob.Close()
					if err != nil || n != int64(size) {
						b.Fatalf("read %d bytes, %v", n, err)
					}
				}
			})
			b.Run(name+"/get-range-64KiB", func(b *testing.B) {
				b.SetBytes(64 << 10)
				for b.Loop() {
					blob, err := st.s.OpenBlob(b.Context(), key)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := blob.Seek(int64(size/2), io.SeekStart); err != nil {
						b.Fatal(err)
					}
					n, err := io.Copy(io.Discard, io.LimitReader(blob, 64<<10))
					blob.Close()
					if err != nil || n != 64<<10 {
						b.Fatalf("read %d bytes, %v", n, err)
					}
				}
			})
		}
	}
}
