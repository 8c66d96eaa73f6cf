package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/esp32image"
)

func init() { subcommands = append(subcommands, newImageCmd) }

// Exit statuses of `espmdm image info`.
const (
	exitImageInvalid = 1 // the file is not a valid image
	exitImageIO      = 2 // the file could not be read
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Inspect ESP32 application images",
	}
	cmd.AddCommand(newImageInfoCmd(), newImageSampleCmd())
	return cmd
}

func newImageInfoCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info [--json] FILE",
		Short: "Show and validate an ESP32-family application image",
		Long: `Show the header, segments, checksum, appended SHA-256 and app descriptor
of an ESP32-family application image (.bin), and validate it.

The output is printed even when the image is invalid, as far as it could be
read. With --json the keys are: chip, chip_id, version, project_name,
idf_version, compile_date, compile_time, secure_version, elf_sha256 (hex),
segments (a list of {load_addr, offset, length, memory}), checksum_valid,
sha256_valid (null when no digest is appended), min_chip_rev_full,
max_chip_rev_full, plus valid, error, length, file_size, entry_addr,
flash_mode, flash_size, flash_freq, hash_appended, checksum, sha256,
min_efuse_blk_rev_full, max_efuse_blk_rev_full, mmu_page_size and
signature_block. App descriptor keys are null when the image has none.

Exit status: 0 for a valid image, 1 for an invalid one, 2 when the file
cannot be read.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return imageInfo(cmd.OutOrStdout(), args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of text")
	return cmd
}

func imageInfo(w io.Writer, path string, asJSON bool) error {
	f, err := os.Open(path)
	if err != nil {
		return &exitError{exitImageIO, err}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return &exitError{exitImageIO, err}
	}
	img, perr := esp32image.ParseReaderAtLenient(f, st.Size())
	if perr != nil && !errors.Is(perr, esp32image.ErrFormat) {
		return &exitError{exitImageIO, perr}
	}
	if img != nil {
		if asJSON {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			if err := enc.Encode(toImageJSON(img, st.Size(), perr)); err != nil {
				return &exitError{exitImageIO, err}
			}
		} else {
			printImageText(w, img, st.Size())
		}
	}
	if perr != nil {
		return &exitError{exitImageInvalid, fmt.Errorf("%s: %w", path, perr)}
	}
	return nil
}

type imageJSON struct {
	Valid              bool          `json:"valid"`
	Error              *string       `json:"error"`
	Chip               string        `json:"chip"`
	ChipID             uint16        `json:"chip_id"`
	Version            *string       `json:"version"`
	ProjectName        *string       `json:"project_name"`
	IDFVersion         *string       `json:"idf_version"`
	CompileDate        *string       `json:"compile_date"`
	CompileTime        *string       `json:"compile_time"`
	SecureVersion      *uint32       `json:"secure_version"`
	ELFSHA256          *string       `json:"elf_sha256"`
	MinEfuseBlkRevFull *uint16       `json:"min_efuse_blk_rev_full"`
	MaxEfuseBlkRevFull *uint16       `json:"max_efuse_blk_rev_full"`
	MMUPageSize        *uint8        `json:"mmu_page_size"`
	Segments           []segmentJSON `json:"segments"`
	Checksum           uint8         `json:"checksum"`
	ChecksumValid      bool          `json:"checksum_valid"`
	HashAppended       bool          `json:"hash_appended"`
	SHA256             *string       `json:"sha256"`
	SHA256Valid        *bool         `json:"sha256_valid"`
	MinChipRevFull     uint16        `json:"min_chip_rev_full"`
	MaxChipRevFull     uint16        `json:"max_chip_rev_full"`
	EntryAddr          uint32        `json:"entry_addr"`
	FlashMode          string        `json:"flash_mode"`
	FlashSize          string        `json:"flash_size"`
	FlashFreq          string        `json:"flash_freq"`
	Length             int           `json:"length"`
	FileSize           int64         `json:"file_size"`
	SignatureBlock     bool          `json:"signature_block"`
}

type segmentJSON struct {
	LoadAddr uint32   `json:"load_addr"`
	Offset   int      `json:"offset"`
	Length   int      `json:"length"`
	Memory   []string `json:"memory"`
}

func toImageJSON(img *esp32image.Image, fileSize int64, perr error) imageJSON {
	h := img.Header
	out := imageJSON{
		Valid:          perr == nil,
		Chip:           h.ChipID.String(),
		ChipID:         uint16(h.ChipID),
		Segments:       []segmentJSON{},
		Checksum:       img.Checksum,
		ChecksumValid:  img.ChecksumValid,
		HashAppended:   h.HashAppended,
		SHA256Valid:    img.SHA256Valid,
		MinChipRevFull: h.MinChipRevFull,
		MaxChipRevFull: h.MaxChipRevFull,
		EntryAddr:      h.EntryAddr,
		FlashMode:      h.SPIMode.String(),
		FlashSize:      h.FlashSizeName(),
		FlashFreq:      h.FlashFreqName(),
		Length:         img.Length,
		FileSize:       fileSize,
		SignatureBlock: img.SignatureBlock,
	}
	if perr != nil {
		s := perr.Error()
		out.Error = &s
	}
	if img.SHA256 != nil {
		s := hex.EncodeToString(img.SHA256)
		out.SHA256 = &s
	}
	for _, s := range img.Segments {
		mem := h.ChipID.MemoryTypes(s.LoadAddr)
		if mem == nil {
			mem = []string{}
		}
		out.Segments = append(out.Segments, segmentJSON{s.LoadAddr, s.Offset, s.Length, mem})
	}
	if d := img.AppDesc; d != nil {
		elf := hex.EncodeToString(d.ELFSHA256[:])
		out.Version, out.ProjectName, out.IDFVersion = &d.Version, &d.ProjectName, &d.IDFVersion
		out.CompileDate, out.CompileTime = &d.Date, &d.Time
		out.SecureVersion, out.ELFSHA256 = &d.SecureVersion, &elf
		out.MinEfuseBlkRevFull, out.MaxEfuseBlkRevFull = &d.MinEfuseBlkRevFull, &d.MaxEfuseBlkRevFull
		out.MMUPageSize = &d.MMUPageSize
	}
	return out
}

func printImageText(w io.Writer, img *esp32image.Image, fileSize int64) {
	h := img.Header
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	orUnknown := func(s string, raw uint8) string {
		if s == "" {
			return fmt.Sprintf("unknown (0x%x)", raw)
		}
		return s
	}
	p("Chip:              %s (id %d)", h.ChipID, uint16(h.ChipID))
	p("Image length:      %d bytes (file %d bytes)", img.Length, fileSize)
	p("Entry point:       0x%08x", h.EntryAddr)
	p("Flash:             mode %s, size %s, freq %s", h.SPIMode,
		orUnknown(h.FlashSizeName(), h.FlashSize), orUnknown(h.FlashFreqName(), h.FlashFreq))
	wp := fmt.Sprintf("0x%02x", h.WPPin)
	if h.WPPin == esp32image.WPPinDisabled {
		wp += " (disabled)"
	}
	p("WP pin:            %s", wp)
	p("Chip revision:     min v%d.%d (legacy %d), max %s", h.MinChipRevFull/100, h.MinChipRevFull%100,
		h.MinChipRev, revString(h.MaxChipRevFull))
	p("Segments:          %d", len(img.Segments))
	for i, s := range img.Segments {
		p("  %2d  load 0x%08x  offset 0x%08x  length 0x%06x  %s", i, s.LoadAddr, s.Offset, s.Length,
			strings.Join(h.ChipID.MemoryTypes(s.LoadAddr), ", "))
	}
	p("Checksum:          0x%02x (%s)", img.Checksum, validWord(img.ChecksumValid))
	switch {
	case img.SHA256Valid == nil:
		p("SHA-256:           not appended")
	case img.SHA256 == nil:
		p("SHA-256:           missing (invalid)")
	default:
		p("SHA-256:           %x (%s)", img.SHA256, validWord(*img.SHA256Valid))
	}
	if img.SignatureBlock {
		p("Signature sector:  at 0x%x, %d block(s) (secure boot v2; not verified)", img.SignatureOffset, img.SignatureBlocks)
	}
	d := img.AppDesc
	if d == nil {
		p("App descriptor:    none")
		return
	}
	p("Project name:      %s", d.ProjectName)
	p("App version:       %s", d.Version)
	p("Compile time:      %s %s", d.Date, d.Time)
	p("ESP-IDF:           %s", d.IDFVersion)
	p("ELF SHA-256:       %x", d.ELFSHA256)
	p("Secure version:    %d", d.SecureVersion)
	p("eFuse block rev:   min %d.%d, max %d.%d", d.MinEfuseBlkRevFull/100, d.MinEfuseBlkRevFull%100,
		d.MaxEfuseBlkRevFull/100, d.MaxEfuseBlkRevFull%100)
	if d.MMUPageSize != 0 && d.MMUPageSize < 32 {
		p("MMU page size:     %d KB", (1<<d.MMUPageSize)/1024)
	}
}

func revString(full uint16) string {
	if full == 0 || full == 0xFFFF {
		return "not set"
	}
	return fmt.Sprintf("v%d.%d", full/100, full%100)
}

func validWord(ok bool) string {
	if ok {
		return "valid"
	}
	return "invalid"
}
