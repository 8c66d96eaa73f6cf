package esp32image_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/espmdm/espmdm/esp32image"
)

func FuzzParse(f *testing.F) {
	for _, pattern := range []string{"testdata/images/*.bin", "testdata/signed/*.bin"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := esp32image.ParseLenient(data)
		strict, serr := esp32image.Parse(data)
		rimg, rerr := esp32image.ParseReaderAtLenient(bytes.NewReader(data), int64(len(data)))
		if errString(err) != errString(serr) || errString(err) != errString(rerr) {
			t.Fatalf("errors differ: lenient %v, strict %v, readerAt %v", err, serr, rerr)
		}
		if !reflect.DeepEqual(img, rimg) {
			t.Fatalf("ParseLenient and ParseReaderAtLenient differ:\n%+v\n%+v", img, rimg)
		}
		if err != nil {
			if !errors.Is(err, esp32image.ErrFormat) {
				t.Fatalf("error %v does not match ErrFormat", err)
			}
			var fe *esp32image.FormatError
			if !errors.As(err, &fe) || fe.Off < 0 {
				t.Fatalf("error %v is not a *FormatError with an offset", err)
			}
			if strict != nil {
				t.Fatalf("Parse returned an image with an error")
			}
		} else if !reflect.DeepEqual(img, strict) {
			t.Fatalf("Parse and ParseLenient differ on a valid image")
		}
		if img == nil {
			return
		}
		if len(img.Segments) > esp32image.MaxSegments {
			t.Fatalf("%d segments", len(img.Segments))
		}
		for _, s := range img.Segments {
			if s.Offset < esp32image.HeaderLen || s.Length < 0 || s.Offset+s.Length > len(data) || s.Length%4 != 0 {
				t.Fatalf("segment %+v out of bounds (%d bytes)", s, len(data))
			}
		}
		if d := img.AppDesc; d != nil && (d.Offset < 0 || d.Offset+esp32image.AppDescLen > len(data)) {
			t.Fatalf("app desc at %d out of bounds", d.Offset)
		}
		if err == nil {
			if !img.ChecksumValid || (img.SHA256Valid != nil && !*img.SHA256Valid) {
				t.Fatalf("valid image with a bad checksum or digest")
			}
			if img.Length > len(data) || img.Length%16 != 0 {
				t.Fatalf("Length %d for %d bytes", img.Length, len(data))
			}
		}
		if img.SignatureBlock && (img.SignatureOffset%esp32image.SigSectorSize != 0 || img.SignatureOffset < img.Length) {
			t.Fatalf("signature sector at %d", img.SignatureOffset)
		}
	})
}
