package esp32image

import "fmt"

// ChipID is the chip identifier stored in the extended image header
// (ESP-IDF esp_chip_id_t, esptool IMAGE_CHIP_ID).
type ChipID uint16

// Chip identifiers known to esptool 5.6.0.
const (
	ChipESP32    ChipID = 0
	ChipESP32S2  ChipID = 2
	ChipESP32C3  ChipID = 5
	ChipESP32S3  ChipID = 9
	ChipESP32C2  ChipID = 12
	ChipESP32C6  ChipID = 13
	ChipESP32H2  ChipID = 16
	ChipESP32P4  ChipID = 18
	ChipESP32C61 ChipID = 20
	ChipESP32C5  ChipID = 23
	ChipESP32H21 ChipID = 25
	ChipESP32H4  ChipID = 28
	ChipESP32E22 ChipID = 31
	ChipESP32S31 ChipID = 32
	ChipInvalid  ChipID = 0xFFFF // ESP_CHIP_ID_INVALID
)

// region is one entry of a chip's address map: [start, end) has type name.
type region struct {
	start, end uint32
	name       string
}

type chipInfo struct {
	name    string
	freq    map[uint8]string // flash frequency nibble -> esptool name
	regions []region         // esptool MEMORY_MAP, in esptool's order
}

var (
	freqClassic = map[uint8]string{0xF: "80m", 0x0: "40m", 0x1: "26m", 0x2: "20m"}
	freqC2      = map[uint8]string{0xF: "60m", 0x0: "30m", 0x1: "20m", 0x2: "15m"}
	freqC6      = map[uint8]string{0x0: "80m", 0x2: "20m"}
	freqC5      = map[uint8]string{0xF: "80m", 0x0: "40m", 0x2: "20m"}
	freqH2      = map[uint8]string{0xF: "48m", 0x0: "24m", 0x1: "16m", 0x2: "12m"}
	freqH4      = map[uint8]string{0xF: "48m", 0x0: "24m"}
)

// chips holds the per-chip facts taken from esptool 5.6.0 (targets/*.py).
var chips = map[ChipID]chipInfo{
	ChipESP32: {"esp32", freqClassic, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x3F400000, 0x3F800000, "DROM"},
		{0x3F800000, 0x3FC00000, "EXTRAM_DATA"},
		{0x3FF80000, 0x3FF82000, "RTC_DRAM"},
		{0x3FF90000, 0x40000000, "BYTE_ACCESSIBLE"},
		{0x3FFAE000, 0x40000000, "DRAM"},
		{0x3FFE0000, 0x3FFFFFFC, "DIRAM_DRAM"},
		{0x40000000, 0x40070000, "IROM"},
		{0x40070000, 0x40078000, "CACHE_PRO"},
		{0x40078000, 0x40080000, "CACHE_APP"},
		{0x40080000, 0x400A0000, "IRAM"},
		{0x400A0000, 0x400BFFFC, "DIRAM_IRAM"},
		{0x400C0000, 0x400C2000, "RTC_IRAM"},
		{0x400D0000, 0x40400000, "IROM"},
		{0x50000000, 0x50002000, "RTC_DATA"},
	}},
	ChipESP32S2: {"esp32s2", freqClassic, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x3F000000, 0x3FF80000, "DROM"},
		{0x3F500000, 0x3FF80000, "EXTRAM_DATA"},
		{0x3FF9E000, 0x3FFA0000, "RTC_DRAM"},
		{0x3FF9E000, 0x40000000, "BYTE_ACCESSIBLE"},
		{0x3FF9E000, 0x40072000, "MEM_INTERNAL"},
		{0x3FFB0000, 0x40000000, "DRAM"},
		{0x40000000, 0x4001A100, "IROM_MASK"},
		{0x40020000, 0x40070000, "IRAM"},
		{0x40070000, 0x40072000, "RTC_IRAM"},
		{0x40080000, 0x40800000, "IROM"},
		{0x50000000, 0x50002000, "RTC_DATA"},
	}},
	ChipESP32S3: {"esp32s3", freqClassic, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x3C000000, 0x3D000000, "DROM"},
		{0x3D000000, 0x3E000000, "EXTRAM_DATA"},
		{0x600FE000, 0x60100000, "RTC_DRAM"},
		{0x3FC88000, 0x3FD00000, "BYTE_ACCESSIBLE"},
		{0x3FC88000, 0x403E2000, "MEM_INTERNAL"},
		{0x3FC88000, 0x3FD00000, "DRAM"},
		{0x40000000, 0x4001A100, "IROM_MASK"},
		{0x40370000, 0x403E0000, "IRAM"},
		{0x600FE000, 0x60100000, "RTC_IRAM"},
		{0x42000000, 0x42800000, "IROM"},
		{0x50000000, 0x50002000, "RTC_DATA"},
	}},
	ChipESP32C3: {"esp32c3", freqClassic, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x3C000000, 0x3C800000, "DROM"},
		{0x3FC80000, 0x3FCE0000, "DRAM"},
		{0x3FC88000, 0x3FD00000, "BYTE_ACCESSIBLE"},
		{0x3FF00000, 0x3FF20000, "DROM_MASK"},
		{0x40000000, 0x40060000, "IROM_MASK"},
		{0x42000000, 0x42800000, "IROM"},
		{0x4037C000, 0x403E0000, "IRAM"},
		{0x50000000, 0x50002000, "RTC_IRAM"},
		{0x50000000, 0x50002000, "RTC_DRAM"},
		{0x600FE000, 0x60100000, "MEM_INTERNAL2"},
	}},
	ChipESP32C2: {"esp32c2", freqC2, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x3C000000, 0x3C400000, "DROM"},
		{0x3FCA0000, 0x3FCE0000, "DRAM"},
		{0x3FC88000, 0x3FD00000, "BYTE_ACCESSIBLE"},
		{0x3FF00000, 0x3FF50000, "DROM_MASK"},
		{0x40000000, 0x40090000, "IROM_MASK"},
		{0x42000000, 0x42400000, "IROM"},
		{0x4037C000, 0x403C0000, "IRAM"},
	}},
	ChipESP32C6: {"esp32c6", freqC6, c6Map(0x43000000, 0x40880000)},
	ChipESP32H2: {"esp32h2", freqH2, c6Map(0x43000000, 0x40880000)},
	ChipESP32C61: {"esp32c61", freqC5, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x42000000, 0x44000000, "DROM"},
		{0x40800000, 0x40860000, "DRAM"},
		{0x40800000, 0x40860000, "BYTE_ACCESSIBLE"},
		{0x4004AC00, 0x40050000, "DROM_MASK"},
		{0x40000000, 0x4004AC00, "IROM_MASK"},
		{0x42000000, 0x44000000, "IROM"},
		{0x40800000, 0x40860000, "IRAM"},
		{0x50000000, 0x50004000, "RTC_IRAM"},
		{0x50000000, 0x50004000, "RTC_DRAM"},
		{0x600FE000, 0x60100000, "MEM_INTERNAL2"},
	}},
	ChipESP32C5: {"esp32c5", freqC5, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x42000000, 0x44000000, "DROM"},
		{0x40800000, 0x40860000, "DRAM"},
		{0x40800000, 0x40860000, "BYTE_ACCESSIBLE"},
		{0x4003A000, 0x40040000, "DROM_MASK"},
		{0x40000000, 0x4003A000, "IROM_MASK"},
		{0x42000000, 0x44000000, "IROM"},
		{0x40800000, 0x40860000, "IRAM"},
		{0x50000000, 0x50004000, "RTC_IRAM"},
		{0x50000000, 0x50004000, "RTC_DRAM"},
		{0x600FE000, 0x60100000, "MEM_INTERNAL2"},
	}},
	ChipESP32P4: {"esp32p4", freqClassic, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x40000000, 0x4C000000, "DROM"},
		{0x4FF00000, 0x4FFA0000, "DRAM"},
		{0x4FF00000, 0x4FFA0000, "BYTE_ACCESSIBLE"},
		{0x4FC00000, 0x4FC20000, "DROM_MASK"},
		{0x4FC00000, 0x4FC20000, "IROM_MASK"},
		{0x40000000, 0x4C000000, "IROM"},
		{0x4FF00000, 0x4FFA0000, "IRAM"},
		{0x50108000, 0x50110000, "RTC_IRAM"},
		{0x50108000, 0x50110000, "RTC_DRAM"},
		{0x600FE000, 0x60100000, "MEM_INTERNAL2"},
	}},
	ChipESP32H21: {"esp32h21", freqH4, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x42000000, 0x43000000, "DROM"},
		{0x40800000, 0x40850000, "DRAM"},
		{0x40800000, 0x40850000, "BYTE_ACCESSIBLE"},
		{0x40000000, 0x40020000, "DROM_MASK"},
		{0x40000000, 0x40020000, "IROM_MASK"},
		{0x42000000, 0x43000000, "IROM"},
		{0x40800000, 0x40850000, "IRAM"},
		{0x50000000, 0x50001000, "RTC_IRAM"},
		{0x50000000, 0x50001000, "RTC_DRAM"},
		{0x40800000, 0x40850000, "MEM_INTERNAL"},
	}},
	ChipESP32H4: {"esp32h4", freqH4, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x42000000, 0x44000000, "DROM"},
		{0x40810000, 0x40860000, "DRAM"},
		{0x40810000, 0x40860000, "BYTE_ACCESSIBLE"},
		{0x40000000, 0x40020000, "DROM_MASK"},
		{0x40000000, 0x40020000, "IROM_MASK"},
		{0x42000000, 0x44000000, "IROM"},
		{0x40810000, 0x40860000, "IRAM"},
		{0x40810000, 0x40860000, "MEM_INTERNAL"},
	}},
	ChipESP32E22: {"esp32e22", freqClassic, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x3C000000, 0x40000000, "DROM"},
		{0x31000000, 0x31200000, "DRAM"},
		{0x31000000, 0x31200000, "BYTE_ACCESSIBLE"},
		{0x30000000, 0x30120000, "DROM_MASK"},
		{0x30000000, 0x30120000, "IROM_MASK"},
		{0x3C000000, 0x40000000, "IROM"},
		{0x30FE0000, 0x31200000, "IRAM"},
		{0xC0000000, 0xC0008000, "RTC_IRAM"},
		{0xC0000000, 0xC0008000, "RTC_DRAM"},
	}},
	ChipESP32S31: {"esp32s31", freqC5, []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x40000000, 0x54000000, "DROM"},
		{0x2F000000, 0x2F080000, "DRAM"},
		{0x2F000000, 0x2F080000, "BYTE_ACCESSIBLE"},
		{0x2F800000, 0x2F850000, "DROM_MASK"},
		{0x2F800000, 0x2F850000, "IROM_MASK"},
		{0x40000000, 0x54000000, "IROM"},
		{0x2F000000, 0x2F080000, "IRAM"},
		{0x2E000000, 0x2E008000, "RTC_IRAM"},
		{0x2E000000, 0x2E008000, "RTC_DRAM"},
	}},
}

// c6Map is the address map shared by the ESP32-C6 and ESP32-H2.
func c6Map(flashEnd, ramEnd uint32) []region {
	return []region{
		{0x00000000, 0x00010000, "PADDING"},
		{0x42000000, flashEnd, "DROM"},
		{0x40800000, ramEnd, "DRAM"},
		{0x40800000, ramEnd, "BYTE_ACCESSIBLE"},
		{0x4004AC00, 0x40050000, "DROM_MASK"},
		{0x40000000, 0x4004AC00, "IROM_MASK"},
		{0x42000000, flashEnd, "IROM"},
		{0x40800000, ramEnd, "IRAM"},
		{0x50000000, 0x50004000, "RTC_IRAM"},
		{0x50000000, 0x50004000, "RTC_DRAM"},
		{0x600FE000, 0x60100000, "MEM_INTERNAL2"},
	}
}

// String returns the chip's lower-case name as ESP-IDF targets are spelled
// ("esp32", "esp32s3", "esp32c6", ...), or "chip(0x0063)" for an id this
// package does not know.
func (c ChipID) String() string {
	if ci, ok := chips[c]; ok {
		return ci.name
	}
	return fmt.Sprintf("chip(0x%04x)", uint16(c))
}

// Known reports whether c is one of the chip ids this package has facts for.
func (c ChipID) Known() bool {
	_, ok := chips[c]
	return ok
}

// ChipByName returns the ChipID whose String is name.
func ChipByName(name string) (ChipID, bool) {
	for id, ci := range chips {
		if ci.name == name {
			return id, true
		}
	}
	return 0, false
}

// MemoryTypes returns the names of the chip's address-map regions that
// contain addr, in esptool's order (for example ["DROM", "IROM"] on the
// ESP32-C6). It returns nil for an unknown chip or an unmapped address.
func (c ChipID) MemoryTypes(addr uint32) []string {
	var out []string
	for _, r := range chips[c].regions {
		if r.start <= addr && addr < r.end {
			out = append(out, r.name)
		}
	}
	return out
}

func (c ChipID) isDROM(addr uint32) bool {
	for _, r := range chips[c].regions {
		if r.name == "DROM" && r.start <= addr && addr < r.end {
			return true
		}
	}
	return false
}
