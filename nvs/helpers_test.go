package nvs_test

import (
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/espmdm/espmdm/nvs"
)

// This file builds NVS images by hand, the way a device writes them, from
// the format facts alone (independently of the encoder under test).

func espCRC(b []byte) uint32 { return crc32.Update(0xFFFFFFFF, crc32.IEEETable, b) }

const (
	stActive  = 0xFFFFFFFE
	stFull    = 0xFFFFFFFC
	stFreeing = 0xFFFFFFF8
	stCorrupt = 0xFFFFFFF0
)

type image struct {
	b []byte
}

func newImage(pages int) *image {
	b := make([]byte, pages*nvs.PageSize)
	for i := range b {
		b[i] = 0xFF
	}
	return &image{b}
}

type page struct {
	img *image
	off int
	n   int // next free entry
}

// page initializes page number idx with a header.
func (im *image) page(idx int, state, seq uint32, version byte) *page {
	off := idx * nvs.PageSize
	h := im.b[off : off+32]
	binary.LittleEndian.PutUint32(h[0:], state)
	binary.LittleEndian.PutUint32(h[4:], seq)
	h[8] = version
	fixPageCRC(im.b, off)
	return &page{img: im, off: off}
}

func fixPageCRC(b []byte, off int) {
	binary.LittleEndian.PutUint32(b[off+28:], espCRC(b[off+4:off+28]))
}

func fixEntryCRC(b []byte, off int) {
	var buf [28]byte
	copy(buf[:4], b[off:off+4])
	copy(buf[4:], b[off+8:off+32])
	binary.LittleEndian.PutUint32(b[off+4:], espCRC(buf[:]))
}

func (p *page) entryOff(i int) int { return p.off + 64 + 32*i }

func (p *page) setState(i int, st byte) {
	byteOff := p.off + 32 + i/4
	shift := uint(i%4) * 2
	p.img.b[byteOff] = p.img.b[byteOff]&^(3<<shift) | st<<shift
}

// put writes one item and returns its entry index.
func (p *page) put(ns, code, chunk byte, key string, data8 []byte, payload []byte) int {
	i := p.n
	span := 1 + (len(payload)+31)/32
	e := p.img.b[p.entryOff(i) : p.entryOff(i)+32]
	e[0], e[1], e[2], e[3] = ns, code, byte(span), chunk
	for j := 8; j < 24; j++ {
		e[j] = 0
	}
	copy(e[8:24], key)
	copy(e[24:32], data8)
	copy(p.img.b[p.entryOff(i)+32:], payload)
	fixEntryCRC(p.img.b, p.entryOff(i))
	for j := i; j < i+span; j++ {
		p.setState(j, 2)
	}
	p.n += span
	return i
}

func (p *page) ns(name string, idx byte) int {
	return p.put(0, 0x01, 0xFF, name, []byte{idx, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, nil)
}

func (p *page) u8(ns byte, key string, v byte) int {
	return p.put(ns, 0x01, 0xFF, key, []byte{v, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, nil)
}

func varData(payload []byte) []byte {
	d := make([]byte, 8)
	binary.LittleEndian.PutUint16(d, uint16(len(payload)))
	d[2], d[3] = 0xFF, 0xFF
	binary.LittleEndian.PutUint32(d[4:], espCRC(payload))
	return d
}

func (p *page) str(ns byte, key, v string) int {
	payload := append([]byte(v), 0)
	return p.put(ns, 0x21, 0xFF, key, varData(payload), payload)
}

func (p *page) blobV1(ns byte, key string, v []byte) int {
	return p.put(ns, 0x41, 0xFF, key, varData(v), v)
}

func (p *page) chunk(ns byte, key string, idx byte, v []byte) int {
	return p.put(ns, 0x42, idx, key, varData(v), v)
}

func (p *page) blobIdx(ns byte, key string, size uint32, count, start byte) int {
	d := make([]byte, 8)
	binary.LittleEndian.PutUint32(d, size)
	d[4], d[5], d[6], d[7] = count, start, 0xFF, 0xFF
	return p.put(ns, 0x48, 0xFF, key, d, nil)
}

// erase marks the item at entry i (and its span) erased, as the runtime does.
func (p *page) erase(i int) {
	span := int(p.img.b[p.entryOff(i)+2])
	for j := i; j < i+span; j++ {
		p.setState(j, 0)
	}
}

// normalize returns what Decode(Encode(entries)) yields: one declaration per
// namespace at its first mention, and of items with the same namespace, type
// and key only the last.
func normalize(entries []nvs.Entry) []nvs.Entry {
	type id struct {
		ns, key string
		t       nvs.Type
	}
	last := map[id]int{}
	for i, e := range entries {
		if e.Type != nvs.TypeNamespace {
			last[id{e.Namespace, e.Key, e.Type}] = i
		}
	}
	var out []nvs.Entry
	seen := map[string]bool{}
	for i, e := range entries {
		if !seen[e.Namespace] {
			seen[e.Namespace] = true
			out = append(out, nvs.NamespaceEntry(e.Namespace))
		}
		if e.Type != nvs.TypeNamespace && last[id{e.Namespace, e.Key, e.Type}] == i {
			out = append(out, e)
		}
	}
	return out
}

// runtimeImages returns the device-written images of TestDecodeRuntime, for
// fuzz seeds.
func runtimeImages(tb testing.TB) [][]byte {
	tb.Helper()
	var out [][]byte
	for _, c := range runtimeCases() {
		out = append(out, c.img().b)
	}
	return out
}

// fixCRCs returns a copy of img with every page header CRC, entry header CRC
// and (where the size fits) item data CRC recomputed, so that fuzzing reaches
// the structural checks behind the CRCs.
func fixCRCs(img []byte) []byte {
	b := append([]byte(nil), img...)
	for off := 0; off+nvs.PageSize <= len(b); off += nvs.PageSize {
		if binary.LittleEndian.Uint32(b[off:]) == 0xFFFFFFFF {
			continue
		}
		fixPageCRC(b, off)
		for i := range 126 {
			if b[off+32+i/4]>>(i%4*2)&3 != 2 {
				continue
			}
			e := off + 64 + 32*i
			switch b[e+1] {
			case 0x21, 0x41, 0x42:
				size := int(binary.LittleEndian.Uint16(b[e+24:]))
				if end := e + 32 + size; end <= off+nvs.PageSize {
					binary.LittleEndian.PutUint32(b[e+28:], espCRC(b[e+32:end]))
				}
			}
			fixEntryCRC(b, e)
		}
	}
	return b
}
