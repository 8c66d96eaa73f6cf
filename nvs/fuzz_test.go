package nvs_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"testing/fstest"

	"github.com/espmdm/espmdm/nvs"
)

// addGoldenSeeds adds the files matching pattern; images are cut to their
// first maxLen bytes, which keeps them valid (trailing pages are blank) and
// keeps the fuzzer fast.
func addGoldenSeeds(f *testing.F, pattern string, maxLen int) {
	f.Helper()
	names, err := filepath.Glob(filepath.Join(goldenDir, pattern))
	if err != nil || len(names) == 0 {
		f.Fatalf("no seeds for %s: %v", pattern, err)
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:min(len(b), maxLen)])
	}
}

// FuzzDecode checks that Decode never panics, that every error is a
// *FormatError inside the image, and that whatever decodes survives an
// encode/decode round trip.
func FuzzDecode(f *testing.F) {
	addGoldenSeeds(f, "*.bin", 2*nvs.PageSize)
	for _, img := range runtimeImages(f) {
		f.Add(img)
	}
	f.Fuzz(func(t *testing.T, img []byte) {
		checkDecode(t, img)
		// Again with valid CRCs, to reach the checks behind them.
		checkDecode(t, fixCRCs(img))
	})
}

func checkDecode(t *testing.T, img []byte) {
	t.Helper()
	entries, err := nvs.Decode(img)
	if err != nil {
		var fe *nvs.FormatError
		if !errors.As(err, &fe) || !errors.Is(err, nvs.ErrFormat) {
			t.Fatalf("Decode error %v is not a *FormatError", err)
		}
		if fe.Off < 0 || (len(img) > 0 && fe.Off >= int64(len(img))) {
			t.Fatalf("FormatError offset %#x outside the %d-byte image", fe.Off, len(img))
		}
		return
	}
	out, err := nvs.Encode(entries, nvs.Options{Size: max(len(img), nvs.MinSize)})
	if errors.Is(err, nvs.ErrNoSpace) {
		return // the generator's layout can need more room than the device's
	}
	if err != nil {
		t.Fatalf("Encode(Decode(img)): %v", err)
	}
	again, err := nvs.Decode(out)
	if err != nil {
		t.Fatalf("Decode(Encode(Decode(img))): %v", err)
	}
	if !reflect.DeepEqual(again, entries) {
		t.Fatalf("round trip changed the entries:\n got %v\nwant %v", again, entries)
	}
}

// FuzzReadCSV checks that ReadCSV never panics, returns errors wrapping
// ErrInvalid, and that what it reads survives WriteCSV and Encode/Decode.
func FuzzReadCSV(f *testing.F) {
	addGoldenSeeds(f, "*.csv", 4096)
	f.Add([]byte("key,type,encoding,value\nns,namespace,,\nf,file,string,f.txt\nb,file,base64,f.txt\n"))
	fsys := fstest.MapFS{
		"f.txt":       {Data: []byte("aGVsbG8=")},
		"d/blob.bin":  {Data: []byte{0, 1, 2, 0xFF}},
		"d/value.hex": {Data: []byte("00ff\n")},
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		entries, err := nvs.ReadCSV(bytes.NewReader(src), fsys)
		if err != nil {
			if !errors.Is(err, nvs.ErrInvalid) {
				t.Fatalf("ReadCSV error %v does not wrap ErrInvalid", err)
			}
			return
		}
		var buf bytes.Buffer
		if err := nvs.WriteCSV(&buf, entries); err == nil {
			again, err := nvs.ReadCSV(&buf, nil)
			if err != nil {
				t.Fatalf("ReadCSV(WriteCSV(entries)): %v\n%s", err, buf.String())
			}
			if !reflect.DeepEqual(normalize(again), normalize(entries)) {
				t.Fatalf("CSV round trip changed the entries:\n got %v\nwant %v", again, entries)
			}
		} else if !errors.Is(err, nvs.ErrInvalid) {
			t.Fatalf("WriteCSV: %v", err)
		}
		img, err := nvs.Encode(entries, nvs.Options{Size: 0x8000})
		if err != nil {
			if !errors.Is(err, nvs.ErrInvalid) && !errors.Is(err, nvs.ErrNoSpace) {
				t.Fatalf("Encode: unexpected error %v", err)
			}
			return
		}
		got, err := nvs.Decode(img)
		if err != nil {
			t.Fatalf("Decode(Encode(entries)): %v", err)
		}
		if want := normalize(entries); !reflect.DeepEqual(got, want) {
			t.Fatalf("encode/decode changed the entries:\n got %v\nwant %v", got, want)
		}
	})
}
