// Package esp32image parses and validates ESP32-family application images
// (the .bin files ESP-IDF's build writes and esptool elf2image produces),
// as described in ESP-IDF's "App Image Format"
// (https://docs.espressif.com/projects/esp-idf/en/stable/esp32/api-reference/system/app_image_format.html)
// and esp_app_format.h / esp_app_desc.h. It uses the standard library only.
//
// Parse and ParseLenient read an image held in memory; ParseReaderAt and
// ParseReaderAtLenient read it from an io.ReaderAt, each byte once, in
// order, without holding the image in memory. An image is valid only when
// the error is nil. Every problem with the bytes is a *FormatError giving
// the file offset (several integrity problems, such as a bad checksum and a
// bad digest, come joined with errors.Join; errors.As finds the first);
// all of them match ErrFormat with errors.Is. Nothing
// panics on any input (the parser is fuzzed), and nothing is allocated in
// proportion to lengths read from the image.
//
// # What is parsed
//
//   - The 24-byte esp_image_header_t: magic, segment count, SPI mode, flash
//     size and frequency, entry address, WP pin, SPI pin drive settings,
//     chip id, legacy minimum revision, min/max chip revision (full), and
//     the hash_appended flag. Chip ids, names, flash frequency names and
//     address maps are those of esptool 5.6.0.
//   - The segments: load address, file offset and length.
//   - The esp_app_desc_t (magic, secure_version, version, project_name,
//     compile time and date, idf_ver, app_elf_sha256, min/max eFuse block
//     revision, MMU page size), read the way esptool image-info reads it: from the
//     first segment whose load address lies in the chip's DROM range, and
//     only when that segment starts with the magic word 0xABCD5432. For a
//     chip id this package does not know, segment 0 is used (ESP-IDF always
//     places the descriptor there).
//
// # What is validated (an error otherwise)
//
//   - magic 0xE9 and a complete 24-byte header;
//   - hash_appended is 0 or 1;
//   - segment count at most 16;
//   - each segment length a multiple of 4 and below 16 MiB, and each segment
//     header and its data inside the file;
//   - the checksum byte: 0xEF XOR every byte of every segment's data, stored
//     in the last byte of the 16-byte block after the segments (the bytes
//     between are padding and are not checked to be zero);
//   - the appended SHA-256 when hash_appended is 1: SHA-256 of everything
//     from the header to the checksum byte;
//   - the file holds the whole image: its length computed from the header
//     and segments (Image.Length) is not beyond the end of the data. Bytes
//     after the image are allowed (signature sectors, 0xFF fill of a
//     partition dump) and ignored;
//   - the app descriptor, when its magic is found: its segment holds all
//     256 bytes, and version, project_name, time, date and idf_ver each
//     contain a NUL within their field.
//
// # What is not validated
//
//   - Secure boot signatures are never verified. A secure boot v2 signature
//     sector is only detected (Image.SignatureBlock): at the first 4 KiB
//     boundary at or after the image, a 1216-byte block with magic 0xE7,
//     version 2 (RSA-PSS) or 3 (ECDSA) and a correct CRC-32, as espsecure
//     checks blocks before appending more. Secure boot v1 (ESP32 only)
//     signatures are not detected.
//   - MMU page congruence of flash-mapped segments (file offset and load
//     address equal modulo the MMU page size) is not checked; it depends on
//     the partition offset, which an image does not carry.
//   - Load addresses are not checked against the chip's memory map, and the
//     entry address is not checked at all.
//   - The chip id may be any value (unknown ids print as "chip(0x1234)").
//     All 16 bits are used; esptool image-info recognises the chip from the
//     low byte only, so the two differ for ids above 0xFF;
//     the chip revision range and the app descriptor's eFuse block revision
//     range are reported, not checked against hardware or each other.
//   - SPI mode, flash size and frequency values are reported as found.
//   - Strings in the app descriptor are not checked to be UTF-8 or
//     printable; bytes after a field's first NUL are ignored (esptool
//     instead deletes NULs and keeps the rest).
//   - The reserved header bytes and descriptor fields are not checked.
//   - ESP8266 images (same magic, no extended header) are not supported.
//
// # Where esptool 5.6.0 image-info answers differently
//
// Checked on images built by this package's tests and by esptool
// elf2image itself; these are esptool's behaviours, kept as they are here:
//
//   - an unknown low chip-id byte, or hash_appended other than 0 or 1, makes
//     esptool parse the file as an ESP8266 image (and often exit 0);
//   - esptool does not check segment lengths when reading (a length that is
//     not a multiple of 4 is read on, and shows as a checksum mismatch);
//   - esptool stops with a Python exception on app descriptor strings that
//     are not UTF-8, and on a first DROM segment shorter than 256 bytes;
//     here the first is valid and the second is an image without a
//     descriptor;
//   - esptool prints descriptor strings through its console markup, which
//     doubles trailing backslashes and drops text between square brackets.
package esp32image
