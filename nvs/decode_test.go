package nvs_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/espmdm/espmdm/nvs"
)

type runtimeCase struct {
	name string
	img  func() *image
	want []nvs.Entry
}

func str(ns, key, v string) nvs.Entry {
	return nvs.Entry{Namespace: ns, Key: key, Type: nvs.TypeString, Value: v}
}

func u8(ns, key string, v uint8) nvs.Entry {
	return nvs.Entry{Namespace: ns, Key: key, Type: nvs.TypeU8, Value: v}
}

func blob(ns, key string, v []byte) nvs.Entry {
	return nvs.Entry{Namespace: ns, Key: key, Type: nvs.TypeBlob, Value: v}
}

func seqBytes(n int, mul byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i) * mul
	}
	return b
}

// runtimeCases are images as a device leaves them after updates.
func runtimeCases() []runtimeCase {
	decl := nvs.NamespaceEntry
	return []runtimeCase{
		{
			name: "erased entries are skipped",
			img: func() *image {
				im := newImage(3)
				p := im.page(0, stActive, 0, 0xFE)
				p.ns("cfg", 1)
				p.erase(p.u8(1, "gone", 1))
				p.u8(1, "kept", 2)
				p.erase(p.str(1, "old_str", "a string spanning two data entries, 32+ bytes"))
				p.str(1, "s", "v")
				return im
			},
			want: []nvs.Entry{decl("cfg"), u8("cfg", "kept", 2), str("cfg", "s", "v")},
		},
		{
			name: "pages ordered by sequence number, newer duplicate wins",
			img: func() *image {
				im := newImage(4)
				newer := im.page(0, stActive, 7, 0xFE) // physical page 0, written last
				older := im.page(2, stFull, 6, 0xFE)
				older.ns("cfg", 1)
				older.u8(1, "x", 1)
				older.str(1, "name", "old")
				older.u8(1, "y", 5)
				newer.u8(1, "x", 2)
				newer.str(1, "name", "new")
				return im
			},
			want: []nvs.Entry{decl("cfg"), u8("cfg", "y", 5), u8("cfg", "x", 2), str("cfg", "name", "new")},
		},
		{
			name: "same key with different types are different items",
			img: func() *image {
				im := newImage(3)
				p := im.page(0, stActive, 0, 0xFE)
				p.ns("cfg", 1)
				p.u8(1, "k", 1)
				p.str(1, "k", "one")
				return im
			},
			want: []nvs.Entry{decl("cfg"), u8("cfg", "k", 1), str("cfg", "k", "one")},
		},
		{
			name: "blob rewritten with a new version, old one erased",
			img: func() *image {
				im := newImage(3)
				p := im.page(0, stActive, 0, 0xFE)
				p.ns("fw", 1)
				c0 := p.chunk(1, "cert", 0x00, seqBytes(40, 1))
				c1 := p.chunk(1, "cert", 0x01, seqBytes(10, 2))
				idx := p.blobIdx(1, "cert", 50, 2, 0x00)
				p.chunk(1, "cert", 0x80, seqBytes(33, 3))
				p.chunk(1, "cert", 0x81, seqBytes(7, 4))
				p.blobIdx(1, "cert", 40, 2, 0x80)
				p.erase(c0)
				p.erase(c1)
				p.erase(idx)
				return im
			},
			want: []nvs.Entry{decl("fw"), blob("fw", "cert", append(seqBytes(33, 3), seqBytes(7, 4)...))},
		},
		{
			name: "blob rewritten, power lost before the old version was erased",
			img: func() *image {
				im := newImage(4)
				a := im.page(0, stFull, 0, 0xFE)
				a.ns("fw", 1)
				a.chunk(1, "cert", 0x00, seqBytes(100, 1))
				a.blobIdx(1, "cert", 100, 1, 0x00)
				b := im.page(1, stActive, 1, 0xFE)
				b.chunk(1, "cert", 0x80, seqBytes(60, 5))
				b.chunk(1, "cert", 0x81, seqBytes(3, 7))
				b.blobIdx(1, "cert", 63, 2, 0x80)
				b.chunk(1, "orphan", 0x00, seqBytes(5, 1)) // chunk without an index
				return im
			},
			want: []nvs.Entry{decl("fw"), blob("fw", "cert", append(seqBytes(60, 5), seqBytes(3, 7)...))},
		},
		{
			name: "FREEING page copied into a newer page, namespace entry moved last",
			img: func() *image {
				im := newImage(4)
				free := im.page(1, stFreeing, 3, 0xFE)
				free.ns("net", 1)
				free.str(1, "ssid", "lab")
				free.u8(1, "chan", 6)
				full := im.page(2, stFull, 2, 0xFE)
				full.u8(1, "early", 9)
				act := im.page(0, stActive, 4, 0xFE)
				act.str(1, "ssid", "lab")
				act.u8(1, "chan", 6)
				act.ns("net", 1)
				return im
			},
			want: []nvs.Entry{decl("net"), u8("net", "early", 9), str("net", "ssid", "lab"), u8("net", "chan", 6)},
		},
		{
			name: "legacy v1 blob replaced by a v2 blob; corrupt-marked page ignored",
			img: func() *image {
				im := newImage(4)
				old := im.page(0, stFull, 0, 0xFF)
				old.ns("app", 1)
				old.blobV1(1, "cal", []byte{1, 2, 3})
				bad := im.page(1, stCorrupt, 9, 0xFE)
				bad.u8(1, "ignored", 1)
				bad.img.b[bad.off+28] ^= 0xFF // even with a broken CRC
				cur := im.page(2, stActive, 1, 0xFE)
				cur.chunk(1, "cal", 0, []byte{4, 5})
				cur.blobIdx(1, "cal", 2, 1, 0)
				return im
			},
			want: []nvs.Entry{decl("app"), blob("app", "cal", []byte{4, 5})},
		},
		{
			name: "write interrupted by a power failure on the active page",
			img: func() *image {
				im := newImage(3)
				p := im.page(0, stActive, 0, 0xFE)
				p.ns("cfg", 1)
				p.u8(1, "a", 1)
				i := p.str(1, "torn", "this write never finished, its entries stay marked empty")
				for j := i; j < p.n; j++ {
					p.setState(j, 3)
				}
				return im
			},
			want: []nvs.Entry{decl("cfg"), u8("cfg", "a", 1)},
		},
		{
			name: "namespace without items",
			img: func() *image {
				im := newImage(3)
				p := im.page(0, stActive, 0, 0xFE)
				p.ns("empty", 1)
				p.ns("used", 2)
				p.u8(2, "a", 1)
				return im
			},
			want: []nvs.Entry{decl("empty"), decl("used"), u8("used", "a", 1)},
		},
	}
}

func TestDecodeRuntime(t *testing.T) {
	for _, c := range runtimeCases() {
		t.Run(c.name, func(t *testing.T) {
			got, err := nvs.Decode(c.img().b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Decode:\n got %v\nwant %v", got, c.want)
			}
		})
	}
}

func golden(t *testing.T, name string) []byte {
	t.Helper()
	return readFile(t, name+".bin")
}

// entryAt returns the offset of entry i of page p.
func entryAt(p, i int) int { return p*nvs.PageSize + 64 + 32*i }

func TestDecodeCorrupt(t *testing.T) {
	// provisioning.bin: page 0 holds the namespace (entry 0) and strings
	// device_key at entry 1 (span 2), client_id at entry 3, ...
	tests := []struct {
		name    string
		base    string
		mutate  func(t *testing.T, b []byte) []byte
		wantOff int
	}{
		{"empty input", "provisioning", func(t *testing.T, b []byte) []byte { return nil }, 0},
		{"truncated", "provisioning", func(t *testing.T, b []byte) []byte { return b[:5000] }, 0},
		{"page header CRC", "provisioning", func(t *testing.T, b []byte) []byte { b[4] = 9; return b }, 28},
		{"unknown page state", "provisioning", func(t *testing.T, b []byte) []byte {
			binary.LittleEndian.PutUint32(b, 0x12345678)
			return b
		}, 0},
		{"unknown format version", "provisioning", func(t *testing.T, b []byte) []byte {
			b[8] = 0xFD
			fixPageCRC(b, 0)
			return b
		}, 8},
		{"garbage in an uninitialized page", "provisioning", func(t *testing.T, b []byte) []byte {
			b[0x3000+100] = 0
			return b
		}, 0x3000 + 100},
		{"entry header CRC", "provisioning", func(t *testing.T, b []byte) []byte {
			b[entryAt(0, 1)+9] ^= 1
			return b
		}, entryAt(0, 1) + 4},
		{"string data CRC", "provisioning", func(t *testing.T, b []byte) []byte {
			b[entryAt(0, 2)] ^= 1
			return b
		}, entryAt(0, 1) + 28},
		{"illegal bitmap state", "provisioning", func(t *testing.T, b []byte) []byte {
			b[32] = b[32]&^3 | 1
			return b
		}, 32},
		{"data entry not marked written", "provisioning", func(t *testing.T, b []byte) []byte {
			b[32] |= 3 << 4 // entry 2, the data of entry 1
			return b
		}, 32},
		{"span does not match the size", "provisioning", func(t *testing.T, b []byte) []byte {
			b[entryAt(0, 1)+2] = 3
			fixEntryCRC(b, entryAt(0, 1))
			return b
		}, entryAt(0, 1) + 2},
		{"string without its NUL", "provisioning", func(t *testing.T, b []byte) []byte {
			e := entryAt(0, 1)
			size := int(binary.LittleEndian.Uint16(b[e+24:]))
			b[e+32+size-1] = 'x'
			binary.LittleEndian.PutUint32(b[e+28:], espCRC(b[e+32:e+32+size]))
			fixEntryCRC(b, e)
			return b
		}, entryAt(0, 1) + 24},
		{"item in an undeclared namespace", "provisioning", func(t *testing.T, b []byte) []byte {
			b[entryAt(0, 1)] = 7
			fixEntryCRC(b, entryAt(0, 1))
			return b
		}, entryAt(0, 1)},
		{"unknown item type", "provisioning", func(t *testing.T, b []byte) []byte {
			b[entryAt(0, 1)+1] = 0x33
			fixEntryCRC(b, entryAt(0, 1))
			return b
		}, entryAt(0, 1) + 1},
		{"data in an empty entry of a full page", "string_boundary", func(t *testing.T, b []byte) []byte {
			// page 0 is FULL; entries 122..125 stayed empty
			b[entryAt(0, 123)+5] = 1
			return b
		}, entryAt(0, 123)},
		{"entry written after an empty one", "provisioning", func(t *testing.T, b []byte) []byte {
			b[32+100/4] &^= 1 << (100 % 4 * 2) // mark entry 100 written
			return b
		}, 32 + 100/4},
		{"duplicate sequence numbers", "strings", func(t *testing.T, b []byte) []byte {
			binary.LittleEndian.PutUint32(b[0x1004:], 0)
			fixPageCRC(b, 0x1000)
			return b
		}, 0x1004},
		{"blob chunk missing", "blob_edges", func(t *testing.T, b []byte) []byte {
			// page 1 entry 0 is chunk 1 of "zero" (span 2); erase it
			b[0x1000+32] &^= 0x0F
			return b
		}, entryAt(1, 2)},
		{"blob index size disagrees with its chunks", "blob_edges", func(t *testing.T, b []byte) []byte {
			e := entryAt(1, 2)
			b[e+24] = 11
			fixEntryCRC(b, e)
			return b
		}, entryAt(1, 2) + 24},
		{"bad blob version offset", "blob_edges", func(t *testing.T, b []byte) []byte {
			e := entryAt(1, 2)
			b[e+29] = 0x40
			fixEntryCRC(b, e)
			return b
		}, entryAt(1, 2) + 29},
		{"namespace index conflict", "namespaces", func(t *testing.T, b []byte) []byte {
			// entry 0 declares alpha = 1; make bravo (entry 4) claim 1 too
			e := entryAt(0, 4)
			if string(b[e+8:e+13]) != "bravo" {
				t.Fatalf("namespaces.bin layout changed: entry 4 is %q", b[e+8:e+24])
			}
			b[e+24] = 1
			fixEntryCRC(b, e)
			return b
		}, entryAt(0, 4) + 24},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := tt.mutate(t, bytes.Clone(golden(t, tt.base)))
			got, err := nvs.Decode(img)
			if err == nil {
				t.Fatalf("Decode succeeded with %d entries, want an error", len(got))
			}
			var fe *nvs.FormatError
			if !errors.As(err, &fe) || !errors.Is(err, nvs.ErrFormat) {
				t.Fatalf("Decode error %v (%T) is not a *FormatError wrapping ErrFormat", err, err)
			}
			if fe.Off != int64(tt.wantOff) {
				t.Errorf("FormatError.Off = %#x, want %#x (%v)", fe.Off, tt.wantOff, err)
			}
		})
	}
}
