// Package esp32imagetest builds ESP32-family application images for tests:
// well-formed images for every chip, and the pieces needed to corrupt them
// one field at a time. It writes bytes the way esptool's elf2image lays
// them out (header, segments, zero padding, checksum, optional SHA-256) but
// does not apply esptool's MMU page alignment, so images stay tiny.
package esp32imagetest

import (
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"

	"github.com/espmdm/espmdm/esp32image"
)

// Segment is one segment to write.
type Segment struct {
	Addr uint32
	Data []byte
}

// Image describes an image to build. The zero value is not useful; start
// from New.
type Image struct {
	Chip       esp32image.ChipID
	SegCount   int // written segment count; -1 means len(Segments)
	SPIMode    uint8
	FlashSize  uint8 // nibble
	FlashFreq  uint8 // nibble
	Entry      uint32
	WPPin      uint8
	PinDrv     [3]uint8
	MinRev     uint8
	MinRevFull uint16
	MaxRevFull uint16
	HashFlag   int // written hash_appended byte; -1 means from Digest
	Digest     bool
	Segments   []Segment
}

// Layout gives the file offsets of the structures Build wrote.
type Layout struct {
	SegHeader []int // offset of each segment header
	SegData   []int // offset of each segment's data
	Checksum  int   // offset of the checksum byte
	Digest    int   // offset of the digest, -1 when none
	Length    int   // total length
}

// Addrs are typical load addresses for one chip, inside esptool's memory
// map for it.
type Addrs struct {
	DROM, DRAM, IRAM, IROM uint32
}

// ChipAddrs holds typical addresses for every chip esptool 5.6.0 knows.
var ChipAddrs = map[esp32image.ChipID]Addrs{
	esp32image.ChipESP32:    {0x3F400020, 0x3FFB0000, 0x40080000, 0x400D0020},
	esp32image.ChipESP32S2:  {0x3F000020, 0x3FFBE000, 0x40024000, 0x40080020},
	esp32image.ChipESP32S3:  {0x3C010020, 0x3FC90000, 0x40374000, 0x42000020},
	esp32image.ChipESP32C3:  {0x3C010020, 0x3FC8A000, 0x40380000, 0x42000020},
	esp32image.ChipESP32C2:  {0x3C010020, 0x3FCA8000, 0x40380000, 0x42000020},
	esp32image.ChipESP32C6:  {0x42010020, 0x40810000, 0x40800000, 0x42000020},
	esp32image.ChipESP32H2:  {0x42010020, 0x40810000, 0x40800000, 0x42000020},
	esp32image.ChipESP32P4:  {0x40010020, 0x4FF10000, 0x4FF00000, 0x40000020},
	esp32image.ChipESP32C61: {0x42010020, 0x40810000, 0x40800000, 0x42000020},
	esp32image.ChipESP32C5:  {0x42010020, 0x40810000, 0x40800000, 0x42000020},
	esp32image.ChipESP32H21: {0x42010020, 0x40810000, 0x40800000, 0x42000020},
	esp32image.ChipESP32H4:  {0x42010020, 0x40820000, 0x40810000, 0x42000020},
	esp32image.ChipESP32E22: {0x3C010020, 0x31000000, 0x30FE0000, 0x3C000020},
	esp32image.ChipESP32S31: {0x40010020, 0x2F000000, 0x2F010000, 0x40000020},
}

// Chips lists the chips in ChipAddrs in id order.
func Chips() []esp32image.ChipID {
	return []esp32image.ChipID{
		esp32image.ChipESP32, esp32image.ChipESP32S2, esp32image.ChipESP32C3,
		esp32image.ChipESP32S3, esp32image.ChipESP32C2, esp32image.ChipESP32C6,
		esp32image.ChipESP32H2, esp32image.ChipESP32P4, esp32image.ChipESP32C61,
		esp32image.ChipESP32C5, esp32image.ChipESP32H21, esp32image.ChipESP32H4,
		esp32image.ChipESP32E22, esp32image.ChipESP32S31,
	}
}

// SampleDesc returns a plausible app descriptor for chip.
func SampleDesc(chip esp32image.ChipID) esp32image.AppDesc {
	d := esp32image.AppDesc{
		SecureVersion:      3,
		Version:            "1.4.2-rc1",
		ProjectName:        "prov-demo-" + chip.String(),
		Time:               "22:07:04",
		Date:               "Oct 30 2024",
		IDFVersion:         "v5.4.1-dirty",
		MinEfuseBlkRevFull: 0,
		MaxEfuseBlkRevFull: 199,
		MMUPageSize:        16,
	}
	for i := range d.ELFSHA256 {
		d.ELFSHA256[i] = byte(i*7) ^ byte(chip)
	}
	return d
}

// New returns a typical image for chip with nseg segments (at least 1):
// segment 0 is the DROM segment starting with desc (padded with filler to
// 256+64 bytes), then DRAM, IRAM and IROM segments and more DRAM
// segments, each with deterministic filler data. With desc nil segment 0
// holds only filler.
func New(chip esp32image.ChipID, nseg int, digest bool, desc *esp32image.AppDesc) *Image {
	a, ok := ChipAddrs[chip]
	if !ok {
		a = ChipAddrs[esp32image.ChipESP32]
	}
	im := &Image{
		Chip:       chip,
		SegCount:   -1,
		SPIMode:    2, // DIO
		FlashSize:  2, // 4MB
		FlashFreq:  0,
		Entry:      a.IRAM + 0x4A4,
		WPPin:      esp32image.WPPinDisabled,
		MinRevFull: 0,
		MaxRevFull: 99,
		HashFlag:   -1,
		Digest:     digest,
	}
	seed := uint32(chip)*131 + uint32(nseg)*7
	if digest {
		seed++
	}
	rodata := Filler(seed, 256+64)
	if desc != nil {
		copy(rodata, AppDescBytes(*desc))
	}
	im.Segments = append(im.Segments, Segment{a.DROM, rodata})
	for i := 1; i < nseg; i++ {
		var addr uint32
		switch i {
		case 1:
			addr = a.DRAM
		case 2:
			addr = a.IRAM
		case 3:
			addr = a.IROM
		default:
			addr = a.DRAM + uint32(i)*0x1000
		}
		im.Segments = append(im.Segments, Segment{addr, Filler(seed+uint32(i), 60+44*i)})
	}
	return im
}

// Filler returns n deterministic pseudo-random bytes (xorshift32), never
// starting with 0x50 so esptool does not mistake a DRAM segment for a
// bootloader descriptor.
func Filler(seed uint32, n int) []byte {
	x := seed*2654435761 + 1
	b := make([]byte, n)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	if n > 0 && b[0] == 0x50 {
		b[0] = 0x51
	}
	return b
}

// AppDescBytes encodes d as the 256-byte esp_app_desc_t with the magic
// word. Strings longer than their field are cut to the field size, leaving
// no NUL, so a test can build a descriptor with an unterminated field.
func AppDescBytes(d esp32image.AppDesc) []byte {
	b := make([]byte, esp32image.AppDescLen)
	binary.LittleEndian.PutUint32(b, esp32image.AppDescMagic)
	binary.LittleEndian.PutUint32(b[4:], d.SecureVersion)
	copy(b[16:48], d.Version)
	copy(b[48:80], d.ProjectName)
	copy(b[80:96], d.Time)
	copy(b[96:112], d.Date)
	copy(b[112:144], d.IDFVersion)
	copy(b[144:176], d.ELFSHA256[:])
	binary.LittleEndian.PutUint16(b[176:], d.MinEfuseBlkRevFull)
	binary.LittleEndian.PutUint16(b[178:], d.MaxEfuseBlkRevFull)
	b[180] = d.MMUPageSize
	return b
}

// Build writes the image and returns it with its layout.
func (im *Image) Build() ([]byte, Layout) {
	var lay Layout
	b := make([]byte, esp32image.HeaderLen, 4096)
	b[0] = esp32image.ImageMagic
	if im.SegCount >= 0 {
		b[1] = byte(im.SegCount)
	} else {
		b[1] = byte(len(im.Segments))
	}
	b[2] = im.SPIMode
	b[3] = im.FlashSize<<4 | im.FlashFreq&0x0F
	binary.LittleEndian.PutUint32(b[4:], im.Entry)
	b[8] = im.WPPin
	copy(b[9:12], im.PinDrv[:])
	binary.LittleEndian.PutUint16(b[12:], uint16(im.Chip))
	b[14] = im.MinRev
	binary.LittleEndian.PutUint16(b[15:], im.MinRevFull)
	binary.LittleEndian.PutUint16(b[17:], im.MaxRevFull)
	switch {
	case im.HashFlag >= 0:
		b[23] = byte(im.HashFlag)
	case im.Digest:
		b[23] = 1
	}
	sum := byte(esp32image.ChecksumSeed)
	for _, s := range im.Segments {
		lay.SegHeader = append(lay.SegHeader, len(b))
		b = binary.LittleEndian.AppendUint32(b, s.Addr)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s.Data)))
		lay.SegData = append(lay.SegData, len(b))
		b = append(b, s.Data...)
		for _, c := range s.Data {
			sum ^= c
		}
	}
	for len(b)%16 != 15 {
		b = append(b, 0)
	}
	lay.Checksum = len(b)
	b = append(b, sum)
	lay.Digest = -1
	if im.Digest {
		d := sha256.Sum256(b)
		lay.Digest = len(b)
		b = append(b, d[:]...)
	}
	lay.Length = len(b)
	return b, lay
}

// Bytes is Build without the layout.
func (im *Image) Bytes() []byte {
	b, _ := im.Build()
	return b
}

// AppendSignatureSector pads img with 0xFF to a 4 KiB boundary and appends
// a secure boot v2 signature sector holding blocks well-formed blocks
// (magic 0xE7, version 2, correct CRC-32, filler where the key and
// signature go), then 0xFF to the end of the sector. The signatures are
// not real.
func AppendSignatureSector(img []byte, blocks int) []byte {
	for len(img)%esp32image.SigSectorSize != 0 {
		img = append(img, 0xFF)
	}
	digest := sha256.Sum256(img)
	sector := make([]byte, 0, esp32image.SigSectorSize)
	for i := range blocks {
		blk := Filler(uint32(0xE7+i), esp32image.SigBlockLen)
		blk[0], blk[1], blk[2], blk[3] = esp32image.SigBlockMagic, 2, 0, 0
		copy(blk[4:36], digest[:])
		binary.LittleEndian.PutUint32(blk[1196:], crc32.ChecksumIEEE(blk[:1196]))
		clear(blk[1200:])
		sector = append(sector, blk...)
	}
	for len(sector) < esp32image.SigSectorSize {
		sector = append(sector, 0xFF)
	}
	return append(img, sector...)
}
