package nvs

import (
	"encoding/binary"
	"hash/crc32"
)

// PageSize is the size of an NVS page, one flash sector. Partition sizes are
// multiples of it.
const PageSize = 4096

// MinSize is the smallest partition Encode accepts: two data pages and the
// spare page the ESP-IDF runtime needs for garbage collection.
const MinSize = 3 * PageSize

// On-flash geometry and codes (ESP-IDF components/nvs_flash, nvs_types.hpp).
const (
	entrySize   = 32
	entryCount  = 126 // entries per page
	firstEntry  = 64  // offset of entry 0 in a page
	bitmapOff   = 32  // offset of the entry-state bitmap
	maxKeyLen   = 15  // bytes, without the NUL
	maxNSIndex  = 254 // namespace indices 1..254; 255 is NS_ANY
	chunkAny    = 0xFF
	maxChunk    = 4000 // 32 * (126-1): the biggest variable-length item data
	maxV1Blob   = 1984 // v1 strings and blobs
	maxChunks   = 127  // chunk indices of one blob version: 0x00..0x7F or 0x80..0xFE
	pageVersion = 8    // offset of the version byte in the page header
)

// Page states (first word of a page; each state clears more bits).
const (
	stateUninit  = 0xFFFFFFFF
	stateActive  = 0xFFFFFFFE
	stateFull    = 0xFFFFFFFC
	stateFreeing = 0xFFFFFFF8
	stateCorrupt = 0xFFFFFFF0
)

// Format version bytes in the page header.
const (
	versionByte1 = 0xFF
	versionByte2 = 0xFE
)

// Item type codes on flash.
const (
	itemU8       = 0x01
	itemI8       = 0x11
	itemU16      = 0x02
	itemI16      = 0x12
	itemU32      = 0x04
	itemI32      = 0x14
	itemU64      = 0x08
	itemI64      = 0x18
	itemString   = 0x21
	itemBlob     = 0x41 // v1 single-page blob
	itemBlobData = 0x42 // v2 blob chunk
	itemBlobIdx  = 0x48 // v2 blob index
)

// Entry states in the bitmap (2 bits per entry).
const (
	entryEmpty   = 3
	entryWritten = 2
	entryErased  = 0
)

// crc is CRC-32 as ESP-IDF computes it: esp_rom_crc32_le(0xffffffff, ...),
// which equals zlib.crc32(b, 0xFFFFFFFF).
func crc(b []byte) uint32 { return crc32.Update(0xFFFFFFFF, crc32.IEEETable, b) }

// entryCRC is the CRC of an entry header: bytes 0..3 and 8..31.
func entryCRC(e []byte) uint32 {
	var buf [28]byte
	copy(buf[:4], e[:4])
	copy(buf[4:], e[8:32])
	return crc(buf[:])
}

// headerCRC is the CRC of a page header: bytes 4..27.
func headerCRC(p []byte) uint32 { return crc(p[4:28]) }

func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
