package esp32image_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
)

// parseBoth parses data with Parse and ParseReaderAt (and their lenient
// forms) and fails unless they agree; it returns the lenient result.
func parseBoth(t *testing.T, data []byte) (*esp32image.Image, error) {
	t.Helper()
	strict, serr := esp32image.Parse(data)
	lenient, lerr := esp32image.ParseLenient(data)
	rStrict, rserr := esp32image.ParseReaderAt(bytes.NewReader(data), int64(len(data)))
	rLenient, rlerr := esp32image.ParseReaderAtLenient(bytes.NewReader(data), int64(len(data)))
	if errString(serr) != errString(lerr) || errString(serr) != errString(rserr) || errString(serr) != errString(rlerr) {
		t.Fatalf("errors differ:\nParse: %v\nParseLenient: %v\nParseReaderAt: %v\nParseReaderAtLenient: %v", serr, lerr, rserr, rlerr)
	}
	if serr != nil && strict != nil {
		t.Errorf("Parse returned an image with error %v", serr)
	}
	if serr == nil && !reflect.DeepEqual(strict, lenient) {
		t.Errorf("Parse and ParseLenient differ on a valid image")
	}
	if rserr != nil && rStrict != nil {
		t.Errorf("ParseReaderAt returned an image with error %v", rserr)
	}
	if !reflect.DeepEqual(lenient, rLenient) {
		t.Errorf("ParseLenient and ParseReaderAtLenient differ:\n%+v\n%+v", lenient, rLenient)
	}
	return lenient, lerr
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

type layoutCase struct {
	nseg   int
	digest bool
}

var layouts = []layoutCase{{1, false}, {1, true}, {3, false}, {3, true}, {5, true}, {16, false}}

func TestParseValidEveryChip(t *testing.T) {
	for _, chip := range esp32imagetest.Chips() {
		for _, lc := range layouts {
			t.Run(fmt.Sprintf("%s/%dseg/digest=%v", chip, lc.nseg, lc.digest), func(t *testing.T) {
				desc := esp32imagetest.SampleDesc(chip)
				spec := esp32imagetest.New(chip, lc.nseg, lc.digest, &desc)
				data, lay := spec.Build()
				img, err := parseBoth(t, data)
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				h := img.Header
				if h.ChipID != chip || h.SegmentCount != lc.nseg || h.HashAppended != lc.digest ||
					h.EntryAddr != spec.Entry || h.SPIMode != esp32image.SPIModeDIO ||
					h.FlashSizeName() != "4MB" || h.WPPin != 0xEE || h.MaxChipRevFull != 99 {
					t.Errorf("header = %+v", h)
				}
				if len(img.Segments) != lc.nseg {
					t.Fatalf("got %d segments, want %d", len(img.Segments), lc.nseg)
				}
				for i, s := range img.Segments {
					want := esp32image.Segment{LoadAddr: spec.Segments[i].Addr, Offset: lay.SegData[i], Length: len(spec.Segments[i].Data)}
					if s != want {
						t.Errorf("segment %d = %+v, want %+v", i, s, want)
					}
				}
				want := desc
				want.Offset = 0x20
				if img.AppDesc == nil || *img.AppDesc != want {
					t.Errorf("app desc = %+v, want %+v", img.AppDesc, want)
				}
				if img.Length != len(data) || img.Length != lay.Length {
					t.Errorf("Length = %d, want %d", img.Length, len(data))
				}
				if !img.ChecksumValid || img.Checksum != data[lay.Checksum] {
					t.Errorf("checksum 0x%02x valid=%v", img.Checksum, img.ChecksumValid)
				}
				if lc.digest {
					if img.SHA256Valid == nil || !*img.SHA256Valid || !bytes.Equal(img.SHA256, data[lay.Digest:]) {
						t.Errorf("digest %x valid=%v", img.SHA256, img.SHA256Valid)
					}
				} else if img.SHA256Valid != nil || img.SHA256 != nil {
					t.Errorf("no digest appended, but SHA256Valid=%v SHA256=%x", img.SHA256Valid, img.SHA256)
				}
				if img.SignatureBlock {
					t.Errorf("SignatureBlock on an unsigned image")
				}
			})
		}
	}
}

// corruption changes a built image and says what error to expect.
type corruption struct {
	name string
	// apply changes data (it may return a shorter or new slice); it returns
	// the offset of the expected error, or -1 when the image stays valid.
	apply func(data []byte, lay esp32imagetest.Layout, nseg int) ([]byte, int)
	msg   string // substring of the error
	// lenientImage: ParseLenient still returns an image.
	lenientImage bool
}

var corruptions = []corruption{
	{"magic", func(b []byte, _ esp32imagetest.Layout, _ int) ([]byte, int) {
		b[0] = 0xE8
		return b, 0
	}, "bad image magic", false},
	{"empty", func(b []byte, _ esp32imagetest.Layout, _ int) ([]byte, int) { return b[:0], 0 }, "empty image", false},
	{"header cut", func(b []byte, _ esp32imagetest.Layout, _ int) ([]byte, int) { return b[:23], 0 }, "truncated image header", false},
	{"segment count 17", func(b []byte, _ esp32imagetest.Layout, _ int) ([]byte, int) {
		b[1] = 17
		return b, 1
	}, "segment count 17 exceeds 16", true},
	{"hash_appended 2", func(b []byte, _ esp32imagetest.Layout, _ int) ([]byte, int) {
		b[23] = 2
		return b, 23
	}, "hash_appended is 0x02", true},
	{"segment length not multiple of 4", func(b []byte, lay esp32imagetest.Layout, n int) ([]byte, int) {
		off := lay.SegHeader[n-1] + 4
		binary.LittleEndian.PutUint32(b[off:], binary.LittleEndian.Uint32(b[off:])+2)
		return b, off
	}, "not a multiple of 4", true},
	{"segment length 16 MiB", func(b []byte, lay esp32imagetest.Layout, n int) ([]byte, int) {
		off := lay.SegHeader[n-1] + 4
		binary.LittleEndian.PutUint32(b[off:], 16<<20)
		return b, off
	}, "not below 16 MiB", true},
	{"segment length past end", func(b []byte, lay esp32imagetest.Layout, n int) ([]byte, int) {
		off := lay.SegHeader[n-1] + 4
		binary.LittleEndian.PutUint32(b[off:], 0x100000)
		return b, lay.SegData[n-1]
	}, "data truncated", true},
	{"segment data cut", func(b []byte, lay esp32imagetest.Layout, n int) ([]byte, int) {
		return b[:lay.SegData[n-1]+2], lay.SegData[n-1]
	}, "data truncated", true},
	{"segment header cut", func(b []byte, lay esp32imagetest.Layout, n int) ([]byte, int) {
		return b[:lay.SegHeader[n-1]+5], lay.SegHeader[n-1]
	}, "truncated header of segment", true},
	{"checksum flipped", func(b []byte, lay esp32imagetest.Layout, _ int) ([]byte, int) {
		b[lay.Checksum] ^= 0x40
		return b, lay.Checksum
	}, "checksum 0x", true},
	{"checksum cut", func(b []byte, lay esp32imagetest.Layout, _ int) ([]byte, int) {
		return b[:lay.Checksum], lay.Checksum
	}, "checksum byte at", true},
	{"segment data flipped", func(b []byte, lay esp32imagetest.Layout, n int) ([]byte, int) {
		b[lay.SegData[n-1]+1] ^= 0x04
		return b, lay.Checksum // and, with a digest, the digest too
	}, "does not match computed", true},
	{"padding byte changed", func(b []byte, lay esp32imagetest.Layout, _ int) ([]byte, int) {
		if lay.Checksum-1 < lay.SegData[len(lay.SegData)-1] {
			return b, -2 // no padding in this layout
		}
		b[lay.Checksum-1] = 0x55
		return b, lay.Digest // the digest covers padding, the checksum does not
	}, "SHA-256 does not match", true},
	{"entry address changed", func(b []byte, lay esp32imagetest.Layout, _ int) ([]byte, int) {
		b[4] ^= 0x10
		return b, lay.Digest // the checksum does not cover the header
	}, "SHA-256 does not match", true},
	{"segment load address changed", func(b []byte, lay esp32imagetest.Layout, n int) ([]byte, int) {
		b[lay.SegHeader[n-1]+1] ^= 0x01
		return b, lay.Digest
	}, "SHA-256 does not match", true},
	{"digest flipped", func(b []byte, lay esp32imagetest.Layout, _ int) ([]byte, int) {
		if lay.Digest < 0 {
			return b, -2
		}
		b[lay.Digest+31] ^= 0x01
		return b, lay.Digest
	}, "SHA-256 does not match", true},
	{"digest cut", func(b []byte, lay esp32imagetest.Layout, _ int) ([]byte, int) {
		if lay.Digest < 0 {
			return b, -2
		}
		return b[:lay.Digest+16], lay.Digest
	}, "SHA-256 needs 32 bytes, have 16", true},
	{"trailing bytes", func(b []byte, _ esp32imagetest.Layout, _ int) ([]byte, int) {
		return append(b, bytes.Repeat([]byte{0xFF}, 5000)...), -1
	}, "", true},
}

func TestParseCorruptions(t *testing.T) {
	for _, chip := range esp32imagetest.Chips() {
		for _, lc := range layouts {
			for _, c := range corruptions {
				name := fmt.Sprintf("%s/%dseg/digest=%v/%s", chip, lc.nseg, lc.digest, c.name)
				t.Run(name, func(t *testing.T) {
					desc := esp32imagetest.SampleDesc(chip)
					data, lay := esp32imagetest.New(chip, lc.nseg, lc.digest, &desc).Build()
					data, wantOff := c.apply(bytes.Clone(data), lay, lc.nseg)
					if wantOff == -2 {
						return // the corruption does not apply to this layout
					}
					img, err := parseBoth(t, data)
					if wantOff == -1 {
						if err != nil {
							t.Fatalf("got error %v, want a valid image", err)
						}
						return
					}
					checkFormatError(t, err, int64(wantOff), c.msg)
					if got := img != nil; got != c.lenientImage {
						t.Errorf("ParseLenient returned image = %v, want %v", got, c.lenientImage)
					}
				})
			}
		}
	}
}

// checkFormatError checks that err is a *FormatError matching ErrFormat
// at off whose message contains msg.
func checkFormatError(t *testing.T, err error, off int64, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one at offset 0x%x containing %q", off, msg)
	}
	if !errors.Is(err, esp32image.ErrFormat) {
		t.Errorf("errors.Is(%v, ErrFormat) = false", err)
	}
	var fe *esp32image.FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *FormatError", err, err)
	}
	if fe.Off != off || !strings.Contains(fe.Msg, msg) {
		t.Errorf("got error %q at 0x%x, want %q at 0x%x", fe.Msg, fe.Off, msg, off)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("0x%x", off)) {
		t.Errorf("error text %q does not give the offset", err)
	}
}

func TestDataCorruptionWithDigestReportsBoth(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	data, lay := esp32imagetest.New(esp32image.ChipESP32S3, 3, true, &desc).Build()
	data[lay.SegData[1]] ^= 0xFF
	img, err := parseBoth(t, data)
	checkFormatError(t, err, int64(lay.Checksum), "checksum")
	if !strings.Contains(err.Error(), "SHA-256 does not match") {
		t.Errorf("error %q does not also report the digest", err)
	}
	if img.ChecksumValid || img.SHA256Valid == nil || *img.SHA256Valid {
		t.Errorf("ChecksumValid=%v SHA256Valid=%v, want both false", img.ChecksumValid, img.SHA256Valid)
	}
}

func TestAppDesc(t *testing.T) {
	chip := esp32image.ChipESP32C3
	a := esp32imagetest.ChipAddrs[chip]
	sample := esp32imagetest.SampleDesc(chip)
	long := strings.Repeat("x", 40)
	tests := []struct {
		name    string
		segs    func() []esp32imagetest.Segment
		wantOff int64 // error offset, -1 for none
		wantMsg string
		want    func(lay esp32imagetest.Layout) *esp32image.AppDesc
	}{
		{"desc in first DROM segment, not segment 0", func() []esp32imagetest.Segment {
			return []esp32imagetest.Segment{
				{Addr: a.DRAM, Data: esp32imagetest.Filler(1, 64)},
				{Addr: a.DROM, Data: esp32imagetest.AppDescBytes(sample)},
			}
		}, -1, "", func(lay esp32imagetest.Layout) *esp32image.AppDesc {
			d := sample
			d.Offset = lay.SegData[1]
			return &d
		}},
		{"only the first DROM segment is looked at", func() []esp32imagetest.Segment {
			return []esp32imagetest.Segment{
				{Addr: a.DROM, Data: esp32imagetest.Filler(2, 300)},
				{Addr: a.DROM + 0x10000, Data: esp32imagetest.AppDescBytes(sample)},
			}
		}, -1, "", func(esp32imagetest.Layout) *esp32image.AppDesc { return nil }},
		{"no DROM segment", func() []esp32imagetest.Segment {
			return []esp32imagetest.Segment{{Addr: a.DRAM, Data: esp32imagetest.AppDescBytes(sample)}}
		}, -1, "", func(esp32imagetest.Layout) *esp32image.AppDesc { return nil }},
		{"empty DROM segment", func() []esp32imagetest.Segment {
			return []esp32imagetest.Segment{{Addr: a.DROM, Data: nil}, {Addr: a.DROM + 0x10000, Data: esp32imagetest.AppDescBytes(sample)}}
		}, -1, "", func(esp32imagetest.Layout) *esp32image.AppDesc { return nil }},
		{"descriptor cut short", func() []esp32imagetest.Segment {
			return []esp32imagetest.Segment{{Addr: a.DROM, Data: esp32imagetest.AppDescBytes(sample)[:200]}}
		}, 0x20, "app descriptor truncated", func(esp32imagetest.Layout) *esp32image.AppDesc { return nil }},
	}
	fields := []struct {
		name string
		pos  int
		set  func(*esp32image.AppDesc, string)
	}{
		{"version", 16, func(d *esp32image.AppDesc, s string) { d.Version = s }},
		{"project_name", 48, func(d *esp32image.AppDesc, s string) { d.ProjectName = s }},
		{"time", 80, func(d *esp32image.AppDesc, s string) { d.Time = s }},
		{"date", 96, func(d *esp32image.AppDesc, s string) { d.Date = s }},
		{"idf_ver", 112, func(d *esp32image.AppDesc, s string) { d.IDFVersion = s }},
	}
	for _, f := range fields {
		d := sample
		f.set(&d, long)
		tests = append(tests, struct {
			name    string
			segs    func() []esp32imagetest.Segment
			wantOff int64
			wantMsg string
			want    func(lay esp32imagetest.Layout) *esp32image.AppDesc
		}{"unterminated " + f.name, func() []esp32imagetest.Segment {
			return []esp32imagetest.Segment{{Addr: a.DROM, Data: esp32imagetest.AppDescBytes(d)}}
		}, int64(0x20 + f.pos), f.name + " is not NUL-terminated", func(esp32imagetest.Layout) *esp32image.AppDesc {
			return nil // checked below: the image carries the cut string
		}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := esp32imagetest.New(chip, 1, true, nil)
			spec.Segments = tt.segs()
			data, lay := spec.Build()
			img, err := parseBoth(t, data)
			if tt.wantOff >= 0 {
				checkFormatError(t, err, tt.wantOff, tt.wantMsg)
				if img == nil || !img.ChecksumValid || !*img.SHA256Valid {
					t.Errorf("lenient image %+v should still have a valid checksum and digest", img)
				}
				if strings.HasPrefix(tt.name, "unterminated") && img.AppDesc == nil {
					t.Errorf("lenient image has no app desc")
				}
				return
			}
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if want := tt.want(lay); !reflect.DeepEqual(img.AppDesc, want) {
				t.Errorf("app desc = %+v, want %+v", img.AppDesc, want)
			}
		})
	}
}

func TestUnknownChip(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	spec := esp32imagetest.New(esp32image.ChipESP32, 2, false, &desc)
	spec.Chip = 0x63
	img, err := parseBoth(t, spec.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := img.Header.ChipID.String(), "chip(0x0063)"; got != want {
		t.Errorf("chip = %q, want %q", got, want)
	}
	if img.AppDesc == nil || img.AppDesc.ProjectName != desc.ProjectName {
		t.Errorf("app desc from segment 0 not found: %+v", img.AppDesc)
	}
	if img.Header.FlashFreqName() != "" || img.Header.ChipID.MemoryTypes(0x3F400020) != nil {
		t.Errorf("unknown chip has flash freq or memory types")
	}
}

func TestZeroSegments(t *testing.T) {
	spec := esp32imagetest.New(esp32image.ChipESP32, 1, true, nil)
	spec.Segments = nil
	data := spec.Bytes()
	img, err := parseBoth(t, data)
	if err != nil {
		t.Fatal(err)
	}
	if img.Length != 32+32 || len(img.Segments) != 0 || img.AppDesc != nil || img.Checksum != 0xEF {
		t.Errorf("image = %+v", img)
	}
}

func TestChipNames(t *testing.T) {
	tests := []struct {
		id   esp32image.ChipID
		want string
	}{
		{0, "esp32"}, {2, "esp32s2"}, {5, "esp32c3"}, {9, "esp32s3"}, {12, "esp32c2"},
		{13, "esp32c6"}, {16, "esp32h2"}, {18, "esp32p4"}, {20, "esp32c61"}, {23, "esp32c5"},
		{25, "esp32h21"}, {28, "esp32h4"}, {31, "esp32e22"}, {32, "esp32s31"},
		{1, "chip(0x0001)"}, {0xFFFF, "chip(0xffff)"},
	}
	for _, tt := range tests {
		if got := tt.id.String(); got != tt.want {
			t.Errorf("ChipID(%d).String() = %q, want %q", tt.id, got, tt.want)
		}
		if id, ok := esp32image.ChipByName(tt.want); ok != tt.id.Known() || (ok && id != tt.id) {
			t.Errorf("ChipByName(%q) = %v, %v", tt.want, id, ok)
		}
	}
}

func TestSignatureSector(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	base := esp32imagetest.New(esp32image.ChipESP32S3, 3, true, &desc).Bytes()
	for _, n := range []int{1, 2, 3} {
		img, err := parseBoth(t, esp32imagetest.AppendSignatureSector(bytes.Clone(base), n))
		if err != nil {
			t.Fatal(err)
		}
		if !img.SignatureBlock || img.SignatureBlocks != n || img.SignatureOffset != 4096 {
			t.Errorf("%d blocks: SignatureBlock=%v blocks=%d at %d", n, img.SignatureBlock, img.SignatureBlocks, img.SignatureOffset)
		}
	}
	signed := esp32imagetest.AppendSignatureSector(bytes.Clone(base), 1)
	for name, mutate := range map[string]func([]byte){
		"bad magic":   func(b []byte) { b[4096] = 0xE6 },
		"bad version": func(b []byte) { b[4097] = 1 },
		"bad crc":     func(b []byte) { b[4096+100] ^= 1 },
		"cut":         func(b []byte) {},
	} {
		b := bytes.Clone(signed)
		mutate(b)
		if name == "cut" {
			b = b[:4096+1000]
		}
		img, err := parseBoth(t, b)
		if err != nil {
			t.Fatal(err)
		}
		if img.SignatureBlock {
			t.Errorf("%s: SignatureBlock detected", name)
		}
	}
}

func TestSignedByEspsecure(t *testing.T) {
	files, _ := filepath.Glob("testdata/signed/*.bin")
	if len(files) == 0 {
		t.Fatal("no testdata/signed/*.bin")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := parseBoth(t, data)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !img.SignatureBlock || img.SignatureBlocks != 1 || img.SignatureOffset != 4096 {
			t.Errorf("%s: SignatureBlock=%v blocks=%d offset=%d", f, img.SignatureBlock, img.SignatureBlocks, img.SignatureOffset)
		}
		// The block's digest field is SHA-256 of the padded image: check the
		// test data is what espsecure made, without verifying a signature.
		sum := sha256.Sum256(data[:4096])
		if !bytes.Equal(data[4096+4:4096+36], sum[:]) {
			t.Errorf("%s: signature block digest field is not the image digest", f)
		}
	}
}

// errReaderAt fails every read after the first n bytes.
type errReaderAt struct {
	data []byte
	n    int64
}

var errDisk = errors.New("disk on fire")

func (r errReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > r.n {
		return 0, errDisk
	}
	return copy(p, r.data[off:]), nil
}

func TestReaderAtErrors(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	data := esp32imagetest.New(esp32image.ChipESP32, 3, true, &desc).Bytes()
	for _, n := range []int64{0, 10, 30, 100, int64(len(data) - 1)} {
		_, err := esp32image.ParseReaderAt(errReaderAt{data, n}, int64(len(data)))
		if !errors.Is(err, errDisk) || errors.Is(err, esp32image.ErrFormat) {
			t.Errorf("fail after %d bytes: got %v, want the read error and not ErrFormat", n, err)
		}
	}
	// A reader shorter than the size it claims.
	_, err := esp32image.ParseReaderAt(bytes.NewReader(data[:100]), int64(len(data)))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short reader: got %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := esp32image.ParseReaderAt(bytes.NewReader(data), -1); err == nil {
		t.Errorf("negative size accepted")
	}
}

// countingReaderAt records how many bytes were read.
type countingReaderAt struct {
	r     io.ReaderAt
	total int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.total += n
	return n, err
}

func TestReaderAtReadsOnce(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	spec := esp32imagetest.New(esp32image.ChipESP32S3, 4, true, &desc)
	spec.Segments[3].Data = esp32imagetest.Filler(9, 300_000) // spans several read chunks
	data := spec.Bytes()
	cr := &countingReaderAt{r: bytes.NewReader(data)}
	if _, err := esp32image.ParseReaderAt(cr, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if cr.total != len(data) {
		t.Errorf("read %d bytes for a %d-byte image", cr.total, len(data))
	}
}

func TestFormatError(t *testing.T) {
	err := error(&esp32image.FormatError{Off: 0x1f, Msg: "checksum"})
	if got, want := err.Error(), "esp32image: at offset 0x1f: checksum"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(fmt.Errorf("wrapped: %w", err), esp32image.ErrFormat) {
		t.Errorf("wrapped FormatError does not match ErrFormat")
	}
}
