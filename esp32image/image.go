package esp32image

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
)

// Format constants (ESP-IDF esp_app_format.h, esp_app_desc.h).
const (
	ImageMagic     = 0xE9       // esp_image_header_t.magic
	AppDescMagic   = 0xABCD5432 // esp_app_desc_t.magic_word
	MaxSegments    = 16         // ESP_IMAGE_MAX_SEGMENTS
	MaxSegmentLen  = 16 << 20   // a segment's length must be below this
	HeaderLen      = 24         // esp_image_header_t
	SegmentHdrLen  = 8          // esp_image_segment_header_t
	AppDescLen     = 256        // esp_app_desc_t
	DigestLen      = sha256.Size
	ChecksumSeed   = 0xEF // ESP_ROM_CHECKSUM_INITIAL
	WPPinDisabled  = 0xEE // the wp_pin value IDF and esptool write
	SigSectorSize  = 4096 // a secure boot v2 signature sector is 4 KiB aligned
	SigBlockLen    = 1216 // one secure boot v2 signature block
	SigBlockMagic  = 0xE7
	maxSigBlocks   = 3
	sigBlockCRCEnd = 1196 // CRC-32 covers the first 1196 bytes of a block
)

// SPIMode is the flash SPI mode in byte 2 of the image header.
type SPIMode uint8

// SPI modes (esp_image_spi_mode_t).
const (
	SPIModeQIO      SPIMode = 0
	SPIModeQOUT     SPIMode = 1
	SPIModeDIO      SPIMode = 2
	SPIModeDOUT     SPIMode = 3
	SPIModeFastRead SPIMode = 4
	SPIModeSlowRead SPIMode = 5
)

// String returns "QIO", "QOUT", "DIO", "DOUT", "FAST_READ", "SLOW_READ" or
// "mode(N)".
func (m SPIMode) String() string {
	switch m {
	case SPIModeQIO:
		return "QIO"
	case SPIModeQOUT:
		return "QOUT"
	case SPIModeDIO:
		return "DIO"
	case SPIModeDOUT:
		return "DOUT"
	case SPIModeFastRead:
		return "FAST_READ"
	case SPIModeSlowRead:
		return "SLOW_READ"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Header is esp_image_header_t: the 8-byte common header and the 16-byte
// extended header.
type Header struct {
	SegmentCount   int     // byte 1
	SPIMode        SPIMode // byte 2
	FlashSize      uint8   // high nibble of byte 3: 0 = 1MB ... 7 = 128MB
	FlashFreq      uint8   // low nibble of byte 3; meaning is chip specific
	EntryAddr      uint32
	WPPin          uint8    // WPPinDisabled when unused
	SPIPinDrv      [3]uint8 // drive strengths, two nibbles per byte
	ChipID         ChipID
	MinChipRev     uint8  // legacy major revision
	MinChipRevFull uint16 // major*100 + minor
	MaxChipRevFull uint16 // major*100 + minor; 0 or 0xFFFF means not set
	HashAppended   bool   // a SHA-256 digest follows the checksum
}

// FlashSizeName returns the flash size as esptool prints it ("4MB"), or ""
// when the nibble is not a known size.
func (h Header) FlashSizeName() string {
	if h.FlashSize > 7 {
		return ""
	}
	return fmt.Sprintf("%dMB", 1<<h.FlashSize)
}

// FlashFreqName returns the flash frequency as esptool prints it for the
// header's chip ("80m"), or "" when the chip or the value is unknown.
func (h Header) FlashFreqName() string {
	return chips[h.ChipID].freq[h.FlashFreq]
}

// Segment is one segment of the image.
type Segment struct {
	LoadAddr uint32 // address the data is loaded or mapped at
	Offset   int    // file offset of the segment's data (after its 8-byte header)
	Length   int    // data length in bytes
}

// AppDesc is esp_app_desc_t, the application description ESP-IDF places at
// the start of the first flash-data (DROM) segment. Strings hold the bytes
// before the first NUL of their field.
type AppDesc struct {
	Offset             int // file offset of the descriptor
	SecureVersion      uint32
	Version            string // PROJECT_VER
	ProjectName        string
	Time               string // __TIME__, "hh:mm:ss"
	Date               string // __DATE__, "Mmm dd yyyy"
	IDFVersion         string
	ELFSHA256          [32]byte
	MinEfuseBlkRevFull uint16 // major*100 + minor
	MaxEfuseBlkRevFull uint16 // major*100 + minor
	MMUPageSize        uint8  // log2 of the MMU page size; 0 = not set
}

// Image is a parsed application image.
type Image struct {
	Header   Header
	Segments []Segment

	// AppDesc is nil when the first DROM segment does not start with the
	// app descriptor magic (or the image has no DROM segment).
	AppDesc *AppDesc

	Checksum      byte // the stored checksum byte
	ChecksumValid bool // it equals the checksum computed over the segment data

	SHA256      []byte // the stored digest; nil when none is appended or it is missing
	SHA256Valid *bool  // nil when Header.HashAppended is false

	// Length is the image length computed from the header and segments:
	// header, segments, padding, checksum byte and, if appended, the digest.
	// Bytes after it (a signature sector, 0xFF fill) are not part of it.
	Length int

	// SignatureBlock reports a secure boot v2 signature sector after the
	// image: at the first 4 KiB boundary at or after Length there is a
	// block with magic 0xE7, version 2 (RSA) or 3 (ECDSA) and a correct
	// CRC-32. The signatures are not verified.
	SignatureBlock bool
	// SignatureOffset is the file offset of that sector, 0 when none.
	SignatureOffset int
	// SignatureBlocks is the number of consecutive well-formed blocks (1-3).
	SignatureBlocks int
}

// Parse parses and validates an application image held in memory. It
// returns an error, and no image, unless the image is valid: every error
// wraps ErrFormat and, for problems with the bytes, is (or joins) a
// *FormatError.
// data may be longer than the image (trailing bytes are ignored apart from
// signature sector detection); data is not retained.
func Parse(data []byte) (*Image, error) {
	return parse(byteSource(data), false)
}

// ParseLenient is Parse for callers that want to show what could be read
// from an invalid image. Once the 24-byte header has been read (the magic
// matched) it returns a non-nil *Image together with any error:
//
//   - an integrity problem (checksum or digest mismatch, a missing
//     checksum byte or digest, a malformed app descriptor) leaves a fully
//     parsed Image with ChecksumValid or *SHA256Valid false;
//   - a structural problem (invalid segment count, segment length or
//     hash_appended flag, a truncated segment) stops parsing: the Image
//     holds the header and the complete segments before the problem,
//     ChecksumValid is false and SHA256Valid is nil.
//
// When several integrity problems are found the error joins them
// (errors.Join), in file order. The image is valid only when err is nil.
func ParseLenient(data []byte) (*Image, error) {
	return parse(byteSource(data), true)
}

// ParseReaderAt is Parse reading the image from r, of which size bytes are
// readable. Every byte up to the end of the image is read exactly once, in
// order, in chunks of at most 64 KiB; the image is never held in memory
// whole. Read errors other than the format errors are returned wrapped.
func ParseReaderAt(r io.ReaderAt, size int64) (*Image, error) {
	src, err := newReaderSource(r, size)
	if err != nil {
		return nil, err
	}
	return parse(src, false)
}

// ParseReaderAtLenient is ParseLenient reading from r like ParseReaderAt.
func ParseReaderAtLenient(r io.ReaderAt, size int64) (*Image, error) {
	src, err := newReaderSource(r, size)
	if err != nil {
		return nil, err
	}
	return parse(src, true)
}

// source gives parse access to the image bytes.
type source interface {
	size() int
	// at returns the n bytes at off; the caller has checked off+n <= size.
	// The result may be overwritten by the next call.
	at(off, n int) ([]byte, error)
	// chunk is the largest n worth asking for when streaming.
	chunk() int
}

type byteSource []byte

func (s byteSource) size() int                     { return len(s) }
func (s byteSource) at(off, n int) ([]byte, error) { return s[off : off+n : off+n], nil }
func (s byteSource) chunk() int                    { return math.MaxInt }

const readChunk = 64 << 10

type readerSource struct {
	r   io.ReaderAt
	n   int
	buf []byte
}

func newReaderSource(r io.ReaderAt, size int64) (*readerSource, error) {
	if size < 0 || uint64(size) > uint64(math.MaxInt) {
		return nil, fmt.Errorf("esp32image: invalid size %d", size)
	}
	return &readerSource{r: r, n: int(size)}, nil
}

func (s *readerSource) size() int  { return s.n }
func (s *readerSource) chunk() int { return readChunk }

func (s *readerSource) at(off, n int) ([]byte, error) {
	if cap(s.buf) < n {
		s.buf = make([]byte, max(n, 256))
	}
	b := s.buf[:n]
	m, err := s.r.ReadAt(b, int64(off))
	if m == n {
		return b, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return nil, fmt.Errorf("esp32image: reading %d bytes at offset 0x%x: %w", n, off, err)
}

// parser carries the running state of one parse.
type parser struct {
	src      source
	img      *Image
	problems []error
	digest   hash.Hash // nil unless a digest is appended
	xor      uint64    // running XOR of segment data, folded at the end
}

func (p *parser) problem(off int, format string, args ...any) {
	p.problems = append(p.problems, formatErr(int64(off), format, args...))
}

func parse(src source, lenient bool) (*Image, error) {
	p := &parser{src: src}
	img, err := p.run()
	if err == nil {
		switch len(p.problems) {
		case 0:
		case 1:
			err = p.problems[0]
		default:
			err = errors.Join(p.problems...)
		}
	}
	if err != nil && !lenient {
		return nil, err
	}
	return img, err
}

// run parses the image. It returns a non-nil error only for problems that
// stop parsing; integrity problems are collected in p.problems.
func (p *parser) run() (*Image, error) {
	size := p.src.size()
	if size < 1 {
		return nil, formatErr(0, "empty image")
	}
	if size < HeaderLen {
		return nil, formatErr(0, "truncated image header: need %d bytes, have %d", HeaderLen, size)
	}
	hb, err := p.src.at(0, HeaderLen)
	if err != nil {
		return nil, err
	}
	if hb[0] != ImageMagic {
		return nil, formatErr(0, "bad image magic 0x%02x, want 0x%02x", hb[0], ImageMagic)
	}
	img := &Image{}
	p.img = img
	h := &img.Header
	h.SegmentCount = int(hb[1])
	h.SPIMode = SPIMode(hb[2])
	h.FlashSize = hb[3] >> 4
	h.FlashFreq = hb[3] & 0x0F
	h.EntryAddr = binary.LittleEndian.Uint32(hb[4:])
	h.WPPin = hb[8]
	copy(h.SPIPinDrv[:], hb[9:12])
	h.ChipID = ChipID(binary.LittleEndian.Uint16(hb[12:]))
	h.MinChipRev = hb[14]
	h.MinChipRevFull = binary.LittleEndian.Uint16(hb[15:])
	h.MaxChipRevFull = binary.LittleEndian.Uint16(hb[17:])
	switch hb[23] {
	case 0:
	case 1:
		h.HashAppended = true
	default:
		return img, formatErr(23, "hash_appended is 0x%02x, want 0 or 1", hb[23])
	}
	if h.SegmentCount > MaxSegments {
		return img, formatErr(1, "segment count %d exceeds %d", h.SegmentCount, MaxSegments)
	}
	if h.HashAppended {
		p.digest = sha256.New()
		p.digest.Write(hb)
	}

	off := HeaderLen
	descTaken := false
	for i := range h.SegmentCount {
		if size-off < SegmentHdrLen {
			return img, formatErr(int64(off), "truncated header of segment %d: need %d bytes, have %d",
				i, SegmentHdrLen, size-off)
		}
		sh, err := p.src.at(off, SegmentHdrLen)
		if err != nil {
			return img, err
		}
		addr := binary.LittleEndian.Uint32(sh)
		n32 := binary.LittleEndian.Uint32(sh[4:])
		if p.digest != nil {
			p.digest.Write(sh)
		}
		if n32%4 != 0 {
			return img, formatErr(int64(off+4), "segment %d length 0x%x is not a multiple of 4", i, n32)
		}
		if n32 >= MaxSegmentLen {
			return img, formatErr(int64(off+4), "segment %d length 0x%x is not below 16 MiB", i, n32)
		}
		n := int(n32)
		dataOff := off + SegmentHdrLen
		if size-dataOff < n {
			return img, formatErr(int64(dataOff), "segment %d data truncated: need %d bytes, have %d",
				i, n, size-dataOff)
		}
		wantDesc := !descTaken && p.isDescSegment(i, addr)
		if wantDesc {
			descTaken = true
		}
		if err := p.segmentData(dataOff, n, wantDesc); err != nil {
			return img, err
		}
		img.Segments = append(img.Segments, Segment{LoadAddr: addr, Offset: dataOff, Length: n})
		off = dataOff + n
	}

	// Zero padding up to the last byte of a 16-byte block, which is the
	// checksum; then the optional digest.
	ckOff := off | 15
	img.Length = ckOff + 1
	if h.HashAppended {
		img.Length += DigestLen
		img.SHA256Valid = new(bool)
	}
	if ckOff >= size {
		p.problem(ckOff, "truncated image: checksum byte at 0x%x is past the end of the file (size 0x%x; image length 0x%x)",
			ckOff, size, img.Length)
		return img, nil
	}
	tail, err := p.src.at(off, ckOff+1-off)
	if err != nil {
		return img, err
	}
	img.Checksum = tail[len(tail)-1]
	sum := fold(p.xor)
	img.ChecksumValid = img.Checksum == sum
	if !img.ChecksumValid {
		p.problem(ckOff, "checksum 0x%02x does not match computed 0x%02x", img.Checksum, sum)
	}
	if p.digest != nil {
		p.digest.Write(tail)
		dOff := ckOff + 1
		if size-dOff < DigestLen {
			p.problem(dOff, "truncated image: appended SHA-256 needs %d bytes, have %d", DigestLen, size-dOff)
			return img, nil
		}
		d, err := p.src.at(dOff, DigestLen)
		if err != nil {
			return img, err
		}
		img.SHA256 = bytes.Clone(d)
		ok := bytes.Equal(img.SHA256, p.digest.Sum(nil))
		*img.SHA256Valid = ok
		if !ok {
			p.problem(dOff, "appended SHA-256 does not match the image")
		}
	}
	return img, p.signature()
}

// isDescSegment reports whether segment i, loaded at addr, is the one the
// app descriptor is read from: like esptool, the first segment whose load
// address is in the chip's DROM range. For a chip this package does not
// know it falls back to segment 0, where ESP-IDF always places it.
func (p *parser) isDescSegment(i int, addr uint32) bool {
	id := p.img.Header.ChipID
	if id.Known() {
		return id.isDROM(addr)
	}
	return i == 0
}

// segmentData streams the data of one segment through the checksum and
// digest, and decodes the app descriptor from its start when wantDesc.
func (p *parser) segmentData(off, n int, wantDesc bool) error {
	chunk := p.src.chunk()
	for done := 0; done < n; {
		k := min(chunk, n-done)
		b, err := p.src.at(off+done, k)
		if err != nil {
			return err
		}
		if done == 0 && wantDesc {
			p.appDesc(off, n, b)
		}
		p.xor ^= xorBytes(b)
		if p.digest != nil {
			p.digest.Write(b)
		}
		done += k
	}
	return nil
}

func xorBytes(b []byte) uint64 {
	var x uint64
	for len(b) >= 32 {
		x ^= binary.LittleEndian.Uint64(b) ^ binary.LittleEndian.Uint64(b[8:]) ^
			binary.LittleEndian.Uint64(b[16:]) ^ binary.LittleEndian.Uint64(b[24:])
		b = b[32:]
	}
	for len(b) >= 8 {
		x ^= binary.LittleEndian.Uint64(b)
		b = b[8:]
	}
	for i, c := range b {
		x ^= uint64(c) << (8 * i)
	}
	return x
}

func fold(x uint64) byte {
	x ^= x >> 32
	x ^= x >> 16
	x ^= x >> 8
	return byte(x) ^ ChecksumSeed
}

// appDesc decodes esp_app_desc_t from b, the first bytes of a segment of
// length n whose data starts at file offset off.
func (p *parser) appDesc(off, n int, b []byte) {
	if len(b) < 4 || binary.LittleEndian.Uint32(b) != AppDescMagic {
		return
	}
	if n < AppDescLen {
		p.problem(off, "app descriptor truncated: its segment has %d bytes, need %d", n, AppDescLen)
		return
	}
	d := &AppDesc{
		Offset:             off,
		SecureVersion:      binary.LittleEndian.Uint32(b[4:]),
		MinEfuseBlkRevFull: binary.LittleEndian.Uint16(b[176:]),
		MaxEfuseBlkRevFull: binary.LittleEndian.Uint16(b[178:]),
		MMUPageSize:        b[180],
	}
	copy(d.ELFSHA256[:], b[144:176])
	for _, f := range []struct {
		dst       *string
		name      string
		pos, size int
	}{
		{&d.Version, "version", 16, 32},
		{&d.ProjectName, "project_name", 48, 32},
		{&d.Time, "time", 80, 16},
		{&d.Date, "date", 96, 16},
		{&d.IDFVersion, "idf_ver", 112, 32},
	} {
		field := b[f.pos : f.pos+f.size]
		end := bytes.IndexByte(field, 0)
		if end < 0 {
			p.problem(off+f.pos, "app descriptor %s is not NUL-terminated within its %d bytes", f.name, f.size)
			end = f.size
		}
		*f.dst = string(field[:end])
	}
	p.img.AppDesc = d
}

// signature looks for a secure boot v2 signature sector after the image.
func (p *parser) signature() error {
	img := p.img
	off := (img.Length + SigSectorSize - 1) &^ (SigSectorSize - 1)
	for i := range maxSigBlocks {
		bo := off + i*SigBlockLen
		if p.src.size()-bo < SigBlockLen {
			break
		}
		b, err := p.src.at(bo, SigBlockLen)
		if err != nil {
			return err
		}
		if b[0] != SigBlockMagic || (b[1] != 2 && b[1] != 3) ||
			crc32.ChecksumIEEE(b[:sigBlockCRCEnd]) != binary.LittleEndian.Uint32(b[sigBlockCRCEnd:]) {
			break
		}
		img.SignatureBlocks++
	}
	if img.SignatureBlocks > 0 {
		img.SignatureBlock = true
		img.SignatureOffset = off
	}
	return nil
}
