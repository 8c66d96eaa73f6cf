// Package nvs encodes and decodes ESP-IDF NVS (non-volatile storage)
// partitions, the key/value store ESP32 firmware reads with nvs_get_str and
// friends, and reads and writes the CSV format of ESP-IDF's partition
// generator. It uses only the standard library.
//
// Format references: the ESP-IDF NVS documentation
// (https://docs.espressif.com/projects/esp-idf/en/latest/esp32/api-reference/storage/nvs_flash.html),
// the runtime in components/nvs_flash (nvs_page.cpp, nvs_types.hpp,
// nvs_storage.cpp) and the generator esp-idf-nvs-partition-gen
// (https://github.com/espressif/esp-idf-nvs-partition-gen).
//
// # The format
//
// A partition is a sequence of 4096-byte pages. A page starts with a 32-byte
// header: a state word (0xFFFFFFFF uninitialized, 0xFFFFFFFE active,
// 0xFFFFFFFC full, 0xFFFFFFF8 freeing; each state clears more bits so flash
// can move forward without an erase), a sequence number, a format version byte
// (0xFF for version 1, 0xFE for version 2), reserved 0xFF bytes and a CRC-32
// of bytes 4..27. A 32-byte bitmap follows with two bits per entry (11 empty,
// 10 written, 00 erased), then 126 entries of 32 bytes. All integers are
// little-endian; the CRC is zlib's crc32 seeded with 0xFFFFFFFF, i.e.
// crc32.Update(0xFFFFFFFF, crc32.IEEETable, b).
//
// An entry is the header of an item: namespace index, type, span (entries
// used), chunk index, CRC-32 of the other 28 bytes, a NUL-padded key of up to
// 15 bytes and 8 bytes of data. Integers (u8 ... i64) live in the data field,
// padded with 0xFF. Namespaces are u8 items in namespace 0 whose value is the
// index (1..254) the namespace's items carry. Strings and blobs store their
// size and a CRC of their bytes in the data field and the bytes themselves in
// the following span-1 entries of the same page; strings include their
// terminating NUL and may be up to 4000 bytes (1984 in format version 1).
// Format version 1 stores a blob as one such item of at most 1984 bytes;
// version 2 splits it into BLOB_DATA chunks, each filling what is left of a
// page, followed by a BLOB_IDX item holding the total size, the chunk count
// and the version offset (0x00 or 0x80) a device flips each time it rewrites
// the blob.
//
// Encode lays entries out exactly as nvs_partition_gen does, byte for byte,
// including its choices that the format does not dictate: the first free
// entry of a page is left unused when a string would end exactly at the page
// end, a blob starting on a page's last entry gets a zero-length first chunk,
// the last used page stays active and every page after it is left erased,
// which keeps the spare page the runtime needs for garbage collection.
// Decode reads those images and the ones a device writes at runtime: it orders
// pages by sequence number, skips erased entries, lets the later of two
// copies of an item win and assembles blobs from the chunks of their current
// version.
//
// # Where this package differs from the generator
//
// The testdata golden vectors were made with esp-idf-nvs-partition-gen 0.3.0;
// Encode matches every one. Where that tool is wrong, this package is right:
//
//   - A namespace row naming a namespace used before switches back to it. The
//     generator keeps writing into the most recently created namespace.
//   - Strings of 3969 to 4000 bytes (with the NUL) are stored on a page of
//     their own, as the runtime would store them. The generator's page test
//     can never accept them: it crashes and leaves an empty output file.
//   - Sizes below 0x3000 are refused with an error saying why: one page must
//     stay erased for the runtime, which otherwise fails nvs_flash_init with
//     ESP_ERR_NVS_NO_FREE_PAGES. The generator writes such images (it assumes
//     a read-only partition) with only a warning.
//   - Keys are limited to 15 bytes, not 15 characters, and must not be empty;
//     a longer UTF-8 key makes the generator write a corrupt entry.
//   - A v2 blob needing more than 127 chunks is refused; the generator writes
//     chunk indices that collide with the blob's second version (up to 255
//     chunks) or crashes.
//   - A 255th namespace is refused; the generator gives it the index 255,
//     which the runtime reserves for "any namespace".
//   - A data row of encoding binary stores the UTF-8 bytes of its value. The
//     generator records the number of characters as the size, so a value
//     with non-ASCII characters becomes an item whose data CRC fails.
//   - In CSV files, encodings and types are case-insensitive, integers may be
//     written in hexadecimal (0x...), base64 padding is optional, a byte-order
//     mark is ignored, rows before the first namespace row are an error
//     (the generator files them under namespace index 0, the namespace table),
//     and file rows are read relative to the CSV's directory rather than the
//     working directory. Only a row starting with '#' is a comment: the
//     generator drops every line starting with '#', also one inside a quoted
//     value, so WriteCSV refuses values containing such a line.
//   - The generator adds hard-coded Wi-Fi entries (sta.apinfo, sta.pmk,
//     sta.apsw, ap.pmk_info) when it sees the keys sta.ssid, sta.pswd or
//     ap.ssid/ap.passwd/ap.authmode. This package writes exactly the entries it
//     is given.
package nvs
