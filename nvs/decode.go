package nvs

import (
	"bytes"
	"encoding/binary"
	"slices"
)

// item is one written item found on flash.
type item struct {
	off   int // offset of its header in the image
	ns    byte
	code  byte
	chunk byte
	key   string
	data  []byte // integer bytes (8), or the variable-length payload
}

type blobKey struct {
	ns  byte
	key string
}

type chunkKey struct {
	blobKey
	chunk byte
}

// Decode parses an NVS partition and returns what the ESP-IDF runtime would
// read from it: namespace declarations and items, in the order they were
// written.
//
// Pages are taken in sequence-number order, so images a device has written
// (several generations of pages, FULL and FREEING pages) decode as well as
// generated ones. Erased entries are skipped, and so is an entry of the
// active page that holds data but is still marked empty (a write interrupted
// by a power failure, which the runtime erases on start-up). Of two items with the same
// namespace, key and type the later one wins; a blob is assembled from the
// chunks of the version its index names, and chunks of other versions or
// without an index are ignored, as the runtime ignores them.
//
// Everything that a valid image cannot contain is an error wrapping ErrFormat,
// a *FormatError giving the offset: a bad page or entry CRC, an unknown page
// state, format version or item type, an inconsistent span or entry-state
// bitmap, data in an entry marked empty outside the active page, an entry
// written after an empty one, an item in an undeclared namespace, a blob
// with missing chunks. Decode never panics.
func Decode(img []byte) ([]Entry, error) {
	if len(img) == 0 || len(img)%PageSize != 0 {
		return nil, formatErr(0, "size %d is not a positive multiple of %d", len(img), PageSize)
	}
	type page struct {
		off int
		seq uint32
	}
	var pages []page
	for off := 0; off < len(img); off += PageSize {
		p := img[off : off+PageSize]
		state := le32(p)
		switch state {
		case stateUninit:
			for i, b := range p {
				if b != 0xFF {
					return nil, formatErr(off+i, "uninitialized page is not erased")
				}
			}
			continue
		case stateCorrupt:
			continue // the runtime ignores and later erases it
		case stateActive, stateFull, stateFreeing:
		default:
			return nil, formatErr(off, "unknown page state %#08x", state)
		}
		if got, want := le32(p[28:]), headerCRC(p); got != want {
			return nil, formatErr(off+28, "page header CRC %#08x, want %#08x", got, want)
		}
		if v := p[pageVersion]; v != versionByte1 && v != versionByte2 {
			return nil, formatErr(off+pageVersion, "unsupported format version byte %#02x", v)
		}
		pages = append(pages, page{off, le32(p[4:])})
	}
	slices.SortStableFunc(pages, func(a, b page) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	var items []item
	for i, pg := range pages {
		if i > 0 && pages[i-1].seq == pg.seq {
			return nil, formatErr(pg.off+4, "sequence number %d used by two pages", pg.seq)
		}
		var err error
		if items, err = readPage(img, pg.off, items); err != nil {
			return nil, err
		}
	}
	return resolve(items)
}

func entryState(p []byte, i int) byte {
	return p[bitmapOff+i/4] >> (i % 4 * 2) & 3
}

// readPage appends the written items of the page at off to items.
func readPage(img []byte, off int, items []item) ([]item, error) {
	p := img[off : off+PageSize]
	if p[63]&0xF0 != 0xF0 {
		return nil, formatErr(off+63, "unused bits of the entry-state bitmap are not set")
	}
	empty := -1 // first empty entry
	for i := 0; i < entryCount; {
		eoff := off + firstEntry + i*entrySize
		e := img[eoff : eoff+entrySize]
		switch entryState(p, i) {
		case entryErased:
			i++
			continue
		case entryEmpty:
			// An entry holding data while still marked empty was being
			// written when power failed. On the active page the runtime
			// erases it on start-up; anywhere else it is corruption.
			if !allFF(e) && le32(p) != stateActive {
				return nil, formatErr(eoff, "entry %d is marked empty but holds data", i)
			}
			if empty < 0 {
				empty = i
			}
			i++
			continue
		case entryWritten:
		default:
			return nil, formatErr(off+bitmapOff+i/4, "entry %d has the illegal state 01", i)
		}
		if empty >= 0 {
			return nil, formatErr(off+bitmapOff+i/4, "entry %d is written after the empty entry %d", i, empty)
		}
		if got, want := le32(e[4:]), entryCRC(e); got != want {
			return nil, formatErr(eoff+4, "entry %d header CRC %#08x, want %#08x", i, got, want)
		}
		it := item{off: eoff, ns: e[0], code: e[1], chunk: e[3]}
		span := int(e[2])
		k := e[8:24]
		n := bytes.IndexByte(k, 0)
		if n < 0 {
			return nil, formatErr(eoff+8, "entry %d key is not NUL-terminated", i)
		}
		if n == 0 {
			return nil, formatErr(eoff+8, "entry %d has an empty key", i)
		}
		it.key = string(k[:n])
		if it.ns == 0xFF {
			return nil, formatErr(eoff, "entry %d uses namespace index 255", i)
		}
		switch it.code {
		case itemU8, itemI8, itemU16, itemI16, itemU32, itemI32, itemU64, itemI64, itemBlobIdx:
			if span != 1 {
				return nil, formatErr(eoff+2, "entry %d: span %d for a fixed-size item, want 1", i, span)
			}
			if it.chunk != chunkAny {
				return nil, formatErr(eoff+3, "entry %d: chunk index %#02x, want 0xff", i, it.chunk)
			}
			it.data = e[24:32]
			if it.code == itemBlobIdx {
				if s := e[29]; s != 0x00 && s != 0x80 {
					return nil, formatErr(eoff+29, "entry %d: blob chunk start %#02x, want 0x00 or 0x80", i, s)
				}
			}
		case itemString, itemBlob, itemBlobData:
			size := int(binary.LittleEndian.Uint16(e[24:]))
			if it.code == itemBlobData {
				if it.chunk == chunkAny {
					return nil, formatErr(eoff+3, "entry %d: blob chunk without a chunk index", i)
				}
			} else if it.chunk != chunkAny {
				return nil, formatErr(eoff+3, "entry %d: chunk index %#02x, want 0xff", i, it.chunk)
			}
			if size > maxChunk {
				return nil, formatErr(eoff+24, "entry %d: data size %d exceeds %d", i, size, maxChunk)
			}
			if want := 1 + (size+entrySize-1)/entrySize; span != want {
				return nil, formatErr(eoff+2, "entry %d: span %d for %d data bytes, want %d", i, span, size, want)
			}
			if i+span > entryCount {
				return nil, formatErr(eoff+2, "entry %d: span %d runs past the end of the page", i, span)
			}
			for j := i + 1; j < i+span; j++ {
				if entryState(p, j) != entryWritten {
					return nil, formatErr(off+bitmapOff+j/4, "entry %d: data entry %d is not marked written", i, j)
				}
			}
			data := img[eoff+entrySize : eoff+entrySize+size]
			if got, want := le32(e[28:]), crc(data); got != want {
				return nil, formatErr(eoff+28, "entry %d data CRC %#08x, want %#08x", i, got, want)
			}
			if it.code == itemString && (size == 0 || data[size-1] != 0) {
				return nil, formatErr(eoff+24, "entry %d: string is not NUL-terminated", i)
			}
			it.data = data
		default:
			return nil, formatErr(eoff+1, "entry %d: unknown item type %#02x", i, it.code)
		}
		if it.ns == 0 && it.code != itemU8 {
			return nil, formatErr(eoff+1, "entry %d: namespace table entry of type %#02x, want u8", i, it.code)
		}
		items = append(items, it)
		i += span
	}
	return items, nil
}

func allFF(b []byte) bool {
	for _, c := range b {
		if c != 0xFF {
			return false
		}
	}
	return true
}

// logical identifies what a later item overwrites: the runtime finds items by
// namespace, type and key.
type logical struct {
	ns   byte
	code byte
	key  string
}

func logicalCode(code byte) byte {
	if code == itemBlob {
		return itemBlobIdx // a v2 blob replaces a legacy one
	}
	return code
}

// resolve turns the items in write order into entries.
func resolve(items []item) ([]Entry, error) {
	names := map[byte]string{}
	byName := map[string]byte{}
	for _, it := range items {
		if it.ns != 0 {
			continue
		}
		idx := it.data[0]
		if idx == 0 || idx == 0xFF {
			return nil, formatErr(it.off+24, "namespace %q has the index %d", it.key, idx)
		}
		if old, ok := names[idx]; ok && old != it.key {
			return nil, formatErr(it.off+24, "namespace index %d names both %q and %q", idx, old, it.key)
		}
		if old, ok := byName[it.key]; ok && old != idx {
			return nil, formatErr(it.off+24, "namespace %q has the indices %d and %d", it.key, old, idx)
		}
		names[idx], byName[it.key] = it.key, idx
	}
	// The last write of each logical item wins.
	last := map[logical]int{}
	chunks := map[chunkKey][]byte{}
	for i, it := range items {
		if it.ns == 0 {
			continue
		}
		if it.code == itemBlobData {
			chunks[chunkKey{blobKey{it.ns, it.key}, it.chunk}] = it.data
			continue
		}
		last[logical{it.ns, logicalCode(it.code), it.key}] = i
	}
	var out []Entry
	declared := map[string]bool{}
	declare := func(ns string) {
		if !declared[ns] {
			declared[ns] = true
			out = append(out, NamespaceEntry(ns))
		}
	}
	for i, it := range items {
		if it.ns == 0 {
			declare(it.key)
			continue
		}
		if it.code == itemBlobData || last[logical{it.ns, logicalCode(it.code), it.key}] != i {
			continue
		}
		ns, ok := names[it.ns]
		if !ok {
			return nil, formatErr(it.off, "item %q is in namespace index %d, which is not declared", it.key, it.ns)
		}
		e := Entry{Namespace: ns, Key: it.key}
		d := it.data
		switch it.code {
		case itemU8:
			e.Type, e.Value = TypeU8, d[0]
		case itemI8:
			e.Type, e.Value = TypeI8, int8(d[0])
		case itemU16:
			e.Type, e.Value = TypeU16, binary.LittleEndian.Uint16(d)
		case itemI16:
			e.Type, e.Value = TypeI16, int16(binary.LittleEndian.Uint16(d))
		case itemU32:
			e.Type, e.Value = TypeU32, binary.LittleEndian.Uint32(d)
		case itemI32:
			e.Type, e.Value = TypeI32, int32(binary.LittleEndian.Uint32(d))
		case itemU64:
			e.Type, e.Value = TypeU64, binary.LittleEndian.Uint64(d)
		case itemI64:
			e.Type, e.Value = TypeI64, int64(binary.LittleEndian.Uint64(d))
		case itemString:
			e.Type, e.Value = TypeString, string(d[:len(d)-1])
		case itemBlob:
			e.Type, e.Value = TypeBlob, bytes.Clone(d)
		case itemBlobIdx:
			size := int(binary.LittleEndian.Uint32(d))
			count, start := int(d[4]), int(d[5])
			if count > maxChunks {
				return nil, formatErr(it.off+28, "blob %q has %d chunks, more than %d", it.key, count, maxChunks)
			}
			if size > count*maxChunk {
				return nil, formatErr(it.off+24, "blob %q of %d bytes cannot fit in %d chunks", it.key, size, count)
			}
			var blob []byte
			for c := start; c < start+count; c++ {
				part, ok := chunks[chunkKey{blobKey{it.ns, it.key}, byte(c)}]
				if !ok {
					return nil, formatErr(it.off, "blob %q lacks chunk %#02x", it.key, c)
				}
				blob = append(blob, part...)
			}
			if blob == nil {
				blob = []byte{}
			}
			if len(blob) != size {
				return nil, formatErr(it.off+24, "blob %q is %d bytes but its chunks hold %d", it.key, size, len(blob))
			}
			e.Type, e.Value = TypeBlob, blob
		}
		declare(ns)
		out = append(out, e)
	}
	return out, nil
}
