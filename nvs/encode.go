package nvs

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Format versions for Options.Version.
const (
	Version1 = 1 // pages marked 0xFF; blobs are single BLOB items of at most 1984 bytes
	Version2 = 2 // pages marked 0xFE; blobs are BLOB_DATA chunks plus a BLOB_IDX (default)
)

// Options control Encode.
type Options struct {
	// Size is the partition size in bytes: a multiple of 4096, at least
	// MinSize (0x3000). The output is exactly this long.
	Size int
	// Version is the format version, Version1 or Version2; 0 means Version2.
	Version int
}

// Encode lays out entries as an NVS partition the way ESP-IDF's
// nvs_partition_gen does: entries in order, pages filled in sequence, the
// last used page left ACTIVE and the rest of the partition erased (0xFF),
// which keeps the spare page the runtime needs.
//
// Items whose namespace has not been declared yet declare it first. Errors
// wrap ErrInvalid for entries that cannot be stored and ErrNoSpace when the
// data does not fit in opts.Size.
func Encode(entries []Entry, opts Options) ([]byte, error) {
	version := opts.Version
	if version == 0 {
		version = Version2
	}
	if version != Version1 && version != Version2 {
		return nil, fmt.Errorf("%w: format version %d (want 1 or 2)", ErrInvalid, opts.Version)
	}
	if opts.Size%PageSize != 0 {
		return nil, fmt.Errorf("%w: size %#x is not a multiple of 4096", ErrInvalid, opts.Size)
	}
	if opts.Size < MinSize {
		return nil, fmt.Errorf("%w: size %#x is below the minimum %#x "+
			"(two data pages plus the spare page the NVS runtime needs)", ErrInvalid, opts.Size, MinSize)
	}
	w := &writer{
		out:      make([]byte, opts.Size),
		maxPages: opts.Size/PageSize - 1,
		v1:       version == Version1,
		ns:       map[string]byte{},
	}
	for i := range w.out {
		w.out[i] = 0xFF
	}
	if err := w.newPage(); err != nil {
		return nil, err
	}
	for i, e := range entries {
		if err := w.add(e); err != nil {
			return nil, fmt.Errorf("entry %d (%s/%s): %w", i, e.Namespace, e.Key, err)
		}
	}
	return w.out, nil
}

// writer holds the state of one Encode call. Its page-filling rules follow
// nvs_partition_gen.py (esp-idf-nvs-partition-gen 0.3.0) decision by decision.
type writer struct {
	out      []byte
	maxPages int // data pages available (one page stays the spare)
	pages    int // pages started
	page     []byte
	n        int // entries used in page
	v1       bool
	ns       map[string]byte
}

func (w *writer) newPage() error {
	if w.pages > 0 {
		binary.LittleEndian.PutUint32(w.page[0:], stateFull)
	}
	if w.pages == w.maxPages {
		return fmt.Errorf("%w: the entries need more than the %d data pages of a %#x partition",
			ErrNoSpace, w.maxPages, len(w.out))
	}
	w.page = w.out[w.pages*PageSize : (w.pages+1)*PageSize]
	w.n = 0
	h := w.page
	binary.LittleEndian.PutUint32(h[0:], stateActive)
	binary.LittleEndian.PutUint32(h[4:], uint32(w.pages))
	if w.v1 {
		h[pageVersion] = versionByte1
	} else {
		h[pageVersion] = versionByte2
	}
	binary.LittleEndian.PutUint32(h[28:], headerCRC(h))
	w.pages++
	return nil
}

// put writes header entry hdr (CRC filled in here) followed by data and marks
// 1+ceil(len(data)/32) entries written.
func (w *writer) put(hdr *[entrySize]byte, data []byte) {
	binary.LittleEndian.PutUint32(hdr[4:], entryCRC(hdr[:]))
	off := firstEntry + w.n*entrySize
	copy(w.page[off:], hdr[:])
	copy(w.page[off+entrySize:], data)
	for range 1 + (len(data)+entrySize-1)/entrySize {
		w.page[bitmapOff+w.n/4] &^= 1 << (w.n % 4 * 2)
		w.n++
	}
}

func header(ns byte, item byte, span int, chunk byte, key string) *[entrySize]byte {
	var h [entrySize]byte
	h[0], h[1], h[2], h[3] = ns, item, byte(span), chunk
	copy(h[8:24], key) // zero padded
	for i := 24; i < entrySize; i++ {
		h[i] = 0xFF
	}
	return &h
}

func checkKey(key, what string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	case len(key) > maxKeyLen:
		return fmt.Errorf("%w: %s %q is %d bytes, longer than %d", ErrInvalid, what, key, len(key), maxKeyLen)
	case bytes.IndexByte([]byte(key), 0) >= 0:
		return fmt.Errorf("%w: %s %q contains a NUL byte", ErrInvalid, what, key)
	}
	return nil
}

// namespace returns the index of ns, writing its namespace entry first if it
// is new.
func (w *writer) namespace(ns string) (byte, error) {
	if idx, ok := w.ns[ns]; ok {
		return idx, nil
	}
	if err := checkKey(ns, "namespace name"); err != nil {
		return 0, err
	}
	if len(w.ns) == maxNSIndex {
		return 0, fmt.Errorf("%w: more than %d namespaces", ErrInvalid, maxNSIndex)
	}
	idx := byte(len(w.ns) + 1)
	var v [8]byte
	v[0] = idx
	if err := w.primitive(0, itemU8, ns, v[:1]); err != nil {
		return 0, err
	}
	w.ns[ns] = idx
	return idx, nil
}

func (w *writer) add(e Entry) error {
	if e.Type == TypeNamespace {
		_, err := w.namespace(e.Namespace)
		return err
	}
	if !checkValue(e.Type, e.Value) {
		return fmt.Errorf("%w: type %s needs a Go value of its own type, got %T", ErrInvalid, e.Type, e.Value)
	}
	if err := checkKey(e.Key, "key"); err != nil {
		return err
	}
	ns, err := w.namespace(e.Namespace)
	if err != nil {
		return err
	}
	var v [8]byte
	switch x := e.Value.(type) {
	case uint8:
		return w.primitive(ns, itemU8, e.Key, []byte{x})
	case int8:
		return w.primitive(ns, itemI8, e.Key, []byte{byte(x)})
	case uint16:
		return w.primitive(ns, itemU16, e.Key, binary.LittleEndian.AppendUint16(v[:0], x))
	case int16:
		return w.primitive(ns, itemI16, e.Key, binary.LittleEndian.AppendUint16(v[:0], uint16(x)))
	case uint32:
		return w.primitive(ns, itemU32, e.Key, binary.LittleEndian.AppendUint32(v[:0], x))
	case int32:
		return w.primitive(ns, itemI32, e.Key, binary.LittleEndian.AppendUint32(v[:0], uint32(x)))
	case uint64:
		return w.primitive(ns, itemU64, e.Key, binary.LittleEndian.AppendUint64(v[:0], x))
	case int64:
		return w.primitive(ns, itemI64, e.Key, binary.LittleEndian.AppendUint64(v[:0], uint64(x)))
	case string:
		data := make([]byte, len(x)+1) // with the NUL
		copy(data, x)
		limit := maxChunk
		if w.v1 {
			limit = maxV1Blob
		}
		if len(data) > limit {
			return fmt.Errorf("%w: string is %d bytes with its NUL, more than %d", ErrInvalid, len(data), limit)
		}
		return w.single(ns, itemString, e.Key, data)
	case []byte:
		if w.v1 {
			if len(x) > maxV1Blob {
				return fmt.Errorf("%w: blob is %d bytes, more than the %d of format version 1", ErrInvalid, len(x), maxV1Blob)
			}
			return w.single(ns, itemBlob, e.Key, x)
		}
		return w.blob(ns, e.Key, x)
	}
	return fmt.Errorf("%w: unsupported type %s", ErrInvalid, e.Type)
}

func (w *writer) primitive(ns, item byte, key string, v []byte) error {
	if w.n >= entryCount {
		if err := w.newPage(); err != nil {
			return err
		}
	}
	h := header(ns, item, 1, chunkAny, key)
	copy(h[24:], v)
	w.put(h, nil)
	return nil
}

// single writes a string or v1 blob: a header and its data on one page.
func (w *writer) single(ns, item byte, key string, data []byte) error {
	span := 1 + (len(data)+entrySize-1)/entrySize
	// The generator moves on when n+span >= 126, wasting the last entry.
	// A span of 126 (a string of 3969..4000 bytes) can never satisfy that
	// and crashes it; such an item fits exactly on an empty page, which is
	// where the ESP-IDF runtime would put it too.
	if w.n >= entryCount || (w.n+span >= entryCount && (span != entryCount || w.n != 0)) {
		if err := w.newPage(); err != nil {
			return err
		}
	}
	h := header(ns, item, span, chunkAny, key)
	binary.LittleEndian.PutUint16(h[24:], uint16(len(data)))
	binary.LittleEndian.PutUint32(h[28:], crc(data))
	w.put(h, data)
	return nil
}

// blob writes a v2 blob as BLOB_DATA chunks, each filling the rest of a page
// but one entry, followed by the BLOB_IDX.
func (w *writer) blob(ns byte, key string, data []byte) error {
	if w.n >= entryCount {
		if err := w.newPage(); err != nil {
			return err
		}
	}
	chunks := 0
	rest := data
	for {
		if chunks == maxChunks {
			return fmt.Errorf("%w: blob of %d bytes needs more than %d chunks", ErrInvalid, len(data), maxChunks)
		}
		room := (entryCount - w.n - 1) * entrySize
		size := min(room, len(rest))
		chunk := rest[:size]
		rest = rest[size:]
		h := header(ns, itemBlobData, 1+(size+entrySize-1)/entrySize, byte(chunks), key)
		binary.LittleEndian.PutUint16(h[24:], uint16(size))
		binary.LittleEndian.PutUint32(h[28:], crc(chunk))
		w.put(h, chunk)
		chunks++
		if len(rest) > 0 || room-size < entrySize {
			if err := w.newPage(); err != nil {
				return err
			}
		}
		if len(rest) == 0 {
			break
		}
	}
	h := header(ns, itemBlobIdx, 1, chunkAny, key)
	binary.LittleEndian.PutUint32(h[24:], uint32(len(data)))
	h[28] = byte(chunks)
	h[29] = 0 // chunkStart: version 0
	w.put(h, nil)
	return nil
}
