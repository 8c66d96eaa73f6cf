package model

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"
)

// CoredumpFormat is how ESP-IDF laid out a core dump.
type CoredumpFormat string

// Core dump formats (CONFIG_ESP_COREDUMP_DATA_FORMAT).
const (
	// CoredumpFormatELF: an ELF core file after the header (ESP-IDF's
	// default since v4.1). It names its application ELF.
	CoredumpFormatELF CoredumpFormat = "elf"
	// CoredumpFormatBinary: the legacy binary layout (task headers and
	// memory). It does not name its application ELF.
	CoredumpFormatBinary CoredumpFormat = "binary"
)

// CoredumpInfo is what a core dump says about itself, read without the
// analysis tools: enough to find its ELF and chip when it is uploaded.
type CoredumpInfo struct {
	// Chip is the chip's name ("esp32c3"); ChipID the esp_chip_id_t of
	// the dump's header.
	Chip   string
	ChipID uint16
	// Xtensa is true for the Xtensa chips (esp32, esp32s2, esp32s3), false
	// for the RISC-V ones.
	Xtensa bool
	Format CoredumpFormat
	// Version is the dump format version of the header (0x0102 is an
	// ELF dump with a CRC-32 and the chip revision).
	Version uint16
	// ELFSHA256Prefix is the start of the SHA-256 of the application ELF
	// the dump came from, lowercase hex, as many characters as the
	// firmware's CONFIG_APP_RETRIEVE_LEN_ELF_SHA (9 by default, up to 64).
	// Empty when the dump does not name one (binary format).
	ELFSHA256Prefix string
	// PanicReason is ESP-IDF's panic message, printable ASCII, empty when
	// the dump has none.
	PanicReason string
	// ChecksumValid reports whether the dump's CRC-32 or SHA-256 matches
	// its content. A dump with a bad checksum is corrupt.
	ChecksumValid bool
	// Length is the dump's length as its header gives it; bytes after it
	// (the rest of the coredump partition) are not part of it.
	Length int
	// ELFOffset and ELFLength locate the ELF core file in the dump (ELF
	// format only).
	ELFOffset, ELFLength int
}

// MatchesELF reports whether sha256Hex, the lowercase hex SHA-256 of an
// application ELF, is the one the dump names.
func (i CoredumpInfo) MatchesELF(sha256Hex string) bool {
	return i.ELFSHA256Prefix != "" && strings.HasPrefix(sha256Hex, i.ELFSHA256Prefix)
}

// coredumpChips maps esp_chip_id_t to the chip names esp-coredump takes.
var coredumpChips = map[uint16]struct {
	name   string
	xtensa bool
}{
	0: {"esp32", true}, 2: {"esp32s2", true}, 9: {"esp32s3", true},
	5: {"esp32c3", false}, 12: {"esp32c2", false}, 13: {"esp32c6", false},
	16: {"esp32h2", false}, 18: {"esp32p4", false}, 20: {"esp32c61", false},
	23: {"esp32c5", false}, 25: {"esp32h21", false}, 28: {"esp32h4", false},
	32: {"esp32s31", false},
}

// CoredumpChipXtensa reports whether chip (a name as in CoredumpInfo.Chip)
// is one of the Xtensa chips.
func CoredumpChipXtensa(chip string) bool {
	switch chip {
	case "esp32", "esp32s2", "esp32s3":
		return true
	}
	return false
}

// Dump format versions (esp_core_dump_types.h: major.minor in 16 bits).
const (
	cdBinV1        = 0x0001
	cdBinV2        = 0x0002
	cdBinV21       = 0x0003
	cdELFCRC32V2   = 0x0100
	cdELFSHA256V2  = 0x0101
	cdELFCRC32V21  = 0x0102
	cdELFSHA256V21 = 0x0103
	cdELFSHA256V22 = 0x0104
)

// ELF constants the parser needs.
const (
	elfPTNote          = 4
	elfETCore          = 4
	elfEMXtensa        = 94
	elfEMRISCV         = 243
	noteTypeESPInfo    = 8266 // ESP_CORE_DUMP_INFO: version, ELF SHA-256 (hex)
	noteTypePanic      = 679  // ESP_PANIC_DETAILS: the panic message
	maxPanicReason     = 512
	maxCoredumpPHNum   = 4096
	coredumpHeaderBase = 8 // tot_len, version
)

func cdErr(off int, format string, args ...any) error {
	return &CoredumpFormatError{Off: int64(off), Msg: fmt.Sprintf(format, args...)}
}

// ReadCoredumpInfo reads the header and notes of a core dump as a device
// reads it from its coredump partition (esp_core_dump_image_get: the
// header, the data, the checksum; trailing partition bytes are ignored). It
// never panics and reads only inside dump; every error matches
// ErrCoredumpFormat and is a *CoredumpFormatError. A checksum mismatch is
// not an error: it is ChecksumValid false.
func ReadCoredumpInfo(dump []byte) (CoredumpInfo, error) {
	var info CoredumpInfo
	if len(dump) < coredumpHeaderBase {
		return info, cdErr(0, "%d bytes, shorter than a core dump header", len(dump))
	}
	totLen := binary.LittleEndian.Uint32(dump[0:])
	ver := binary.LittleEndian.Uint32(dump[4:])
	info.Version = uint16(ver)
	info.ChipID = uint16(ver >> 16)

	hdrLen, sumLen := 0, 4
	switch info.Version {
	case cdBinV1:
		hdrLen = 16
	case cdBinV2, cdELFCRC32V2:
		hdrLen = 20
	case cdELFSHA256V2:
		hdrLen, sumLen = 20, sha256.Size
	case cdBinV21, cdELFCRC32V21:
		hdrLen = 24
	case cdELFSHA256V21:
		hdrLen, sumLen = 24, sha256.Size
	case cdELFSHA256V22:
		hdrLen, sumLen = 12, sha256.Size
	default:
		return info, cdErr(4, "unknown core dump version 0x%04x", info.Version)
	}
	if info.Version >= cdELFCRC32V2 {
		info.Format = CoredumpFormatELF
	} else {
		info.Format = CoredumpFormatBinary
	}
	chip, ok := coredumpChips[info.ChipID]
	if !ok {
		return info, cdErr(6, "unknown chip id %d", info.ChipID)
	}
	info.Chip, info.Xtensa = chip.name, chip.xtensa

	if uint64(totLen) < uint64(hdrLen+sumLen) || uint64(totLen) > uint64(len(dump)) {
		return info, cdErr(0, "length %d is outside %d..%d (header, checksum, the bytes given)", totLen, hdrLen+sumLen, len(dump))
	}
	info.Length = int(totLen)
	body := dump[:info.Length-sumLen] // header and data: what the checksum covers
	sum := dump[info.Length-sumLen : info.Length]
	if sumLen == 4 {
		info.ChecksumValid = crc32.ChecksumIEEE(body) == binary.LittleEndian.Uint32(sum)
	} else {
		d := sha256.Sum256(body)
		info.ChecksumValid = bytes.Equal(d[:], sum)
	}
	if info.Format == CoredumpFormatBinary {
		return info, nil
	}
	info.ELFOffset, info.ELFLength = hdrLen, len(body)-hdrLen
	if err := readCoredumpNotes(&info, body[hdrLen:], hdrLen); err != nil {
		return info, err
	}
	return info, nil
}

// readCoredumpNotes checks the ELF core file's header and reads the notes
// that name the application ELF and the panic reason. base is the ELF's
// offset in the dump, for error offsets.
func readCoredumpNotes(info *CoredumpInfo, elf []byte, base int) error {
	le := binary.LittleEndian
	if len(elf) < 52 {
		return cdErr(base, "ELF core file of %d bytes is shorter than an ELF header", len(elf))
	}
	if !bytes.Equal(elf[:4], []byte("\x7fELF")) {
		return cdErr(base, "no ELF magic")
	}
	if elf[4] != 1 || elf[5] != 1 {
		return cdErr(base+4, "not a 32-bit little-endian ELF (class %d, data %d)", elf[4], elf[5])
	}
	if t := le.Uint16(elf[16:]); t != elfETCore {
		return cdErr(base+16, "ELF type %d is not a core file", t)
	}
	machine := le.Uint16(elf[18:])
	switch {
	case machine == elfEMXtensa && !info.Xtensa, machine == elfEMRISCV && info.Xtensa,
		machine != elfEMXtensa && machine != elfEMRISCV:
		return cdErr(base+18, "ELF machine %d does not fit chip %s", machine, info.Chip)
	}
	phoff := uint64(le.Uint32(elf[28:]))
	phentsize := uint64(le.Uint16(elf[42:]))
	phnum := uint64(le.Uint16(elf[44:]))
	if phnum == 0 {
		return nil
	}
	if phentsize < 32 || phnum > maxCoredumpPHNum || phoff+phnum*phentsize > uint64(len(elf)) {
		return cdErr(base+28, "program headers (%d of %d bytes at 0x%x) are outside the ELF", phnum, phentsize, phoff)
	}
	for i := uint64(0); i < phnum; i++ {
		ph := elf[phoff+i*phentsize:]
		if le.Uint32(ph[0:]) != elfPTNote {
			continue
		}
		off, size := uint64(le.Uint32(ph[4:])), uint64(le.Uint32(ph[16:]))
		if off+size > uint64(len(elf)) {
			return cdErr(base+int(phoff+i*phentsize), "note segment (0x%x bytes at 0x%x) is outside the ELF", size, off)
		}
		if err := readNotes(info, elf[off:off+size], base+int(off)); err != nil {
			return err
		}
	}
	return nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// readNotes walks the notes of one PT_NOTE segment.
func readNotes(info *CoredumpInfo, seg []byte, base int) error {
	le := binary.LittleEndian
	for pos := uint64(0); pos < uint64(len(seg)); {
		if uint64(len(seg))-pos < 12 {
			return cdErr(base+int(pos), "truncated note header")
		}
		namesz := uint64(le.Uint32(seg[pos:]))
		descsz := uint64(le.Uint32(seg[pos+4:]))
		typ := le.Uint32(seg[pos+8:])
		nameOff := pos + 12
		descOff := nameOff + align4(namesz)
		end := descOff + align4(descsz)
		// The last note's padding may be cut off; its content may not.
		if descOff+descsz > uint64(len(seg)) {
			return cdErr(base+int(pos), "note of %d+%d bytes runs past its segment", namesz, descsz)
		}
		name := string(bytes.TrimRight(seg[nameOff:nameOff+namesz], "\x00"))
		desc := seg[descOff : descOff+descsz]
		switch {
		case typ == noteTypeESPInfo && name == "ESP_CORE_DUMP_INFO":
			if err := readInfoNote(info, desc, base+int(descOff)); err != nil {
				return err
			}
		case typ == noteTypePanic && name == "ESP_PANIC_DETAILS":
			info.PanicReason = printable(desc, maxPanicReason)
		}
		pos = end
	}
	return nil
}

// readInfoNote reads ESP_CORE_DUMP_INFO: a version word, then the hex
// SHA-256 of the application ELF, NUL-padded to 64 characters.
func readInfoNote(info *CoredumpInfo, desc []byte, off int) error {
	if len(desc) < 5 {
		return cdErr(off, "ESP_CORE_DUMP_INFO note of %d bytes has no ELF SHA-256", len(desc))
	}
	hex := desc[4:]
	if i := bytes.IndexByte(hex, 0); i >= 0 {
		hex = hex[:i]
	}
	if len(hex) > 2*sha256.Size {
		hex = hex[:2*sha256.Size]
	}
	if len(hex) == 0 {
		return cdErr(off+4, "ESP_CORE_DUMP_INFO names an empty ELF SHA-256")
	}
	for i, c := range hex {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return cdErr(off+4+i, "ELF SHA-256 in ESP_CORE_DUMP_INFO is not lowercase hex")
		}
	}
	info.ELFSHA256Prefix = string(hex)
	return nil
}

// printable returns b up to its first NUL and at most max bytes, with every
// byte outside printable ASCII replaced by '?'.
func printable(b []byte, max int) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	if len(b) > max {
		b = b[:max]
	}
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		out[i] = c
	}
	return strings.TrimSpace(string(out))
}
