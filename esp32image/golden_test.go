package esp32image_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
)

// The golden images are written by the builder and described by esptool:
//
//	go test ./esp32image -run TestGolden -update
//
// rewrites testdata/images/*.bin and, with esptool on PATH, records
// `esptool image-info` for each in testdata/esptool-<version>/.
var update = flag.Bool("update", false, "rewrite testdata/images and the recorded esptool output")

const esptoolDir = "testdata/esptool-5.6.0"

// goldenImages returns the images kept in testdata, by file name.
func goldenImages() map[string][]byte {
	out := map[string][]byte{}
	for _, chip := range esp32imagetest.Chips() {
		d := esp32imagetest.SampleDesc(chip)
		out[chip.String()+"-1seg.bin"] = esp32imagetest.New(chip, 1, false, &d).Bytes()
		out[chip.String()+"-4seg-sha.bin"] = esp32imagetest.New(chip, 4, true, &d).Bytes()
	}
	d := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	d.Version = "qa-test-v5.0-20220830-4-g4532e6" // 31 chars, the longest IDF writes
	d.IDFVersion = "v5.0-beta1-427-g4532e6e0b2-dirt"
	d.MMUPageSize = 0
	d.SecureVersion = 0
	out["esp32-7seg-sha.bin"] = esp32imagetest.New(esp32image.ChipESP32, 7, true, &d).Bytes()
	out["esp32-2seg-sha-trailing.bin"] = padFF(esp32imagetest.New(esp32image.ChipESP32, 2, true, &d).Bytes(), 4096)

	out["esp32s3-3seg-nodesc.bin"] = esp32imagetest.New(esp32image.ChipESP32S3, 3, false, nil).Bytes()

	b, lay := esp32imagetest.New(esp32image.ChipESP32, 3, false, &d).Build()
	b[lay.Checksum] ^= 0x01
	out["esp32-3seg-badsum.bin"] = b

	dc3 := esp32imagetest.SampleDesc(esp32image.ChipESP32C3)
	b, lay = esp32imagetest.New(esp32image.ChipESP32C3, 3, true, &dc3).Build()
	b[lay.Digest+5] ^= 0x80
	out["esp32c3-3seg-badsha.bin"] = b

	ds3 := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	b, lay = esp32imagetest.New(esp32image.ChipESP32S3, 4, true, &ds3).Build()
	b[lay.SegData[2]+3] ^= 0x10
	out["esp32s3-4seg-sha-baddata.bin"] = b

	dc6 := esp32imagetest.SampleDesc(esp32image.ChipESP32C6)
	out["esp32c6-4seg-sha-signed.bin"] = esp32imagetest.AppendSignatureSector(
		esp32imagetest.New(esp32image.ChipESP32C6, 4, true, &dc6).Bytes(), 1)
	return out
}

func padFF(b []byte, align int) []byte {
	for len(b)%align != 0 {
		b = append(b, 0xFF)
	}
	return b
}

func goldenNames(m map[string][]byte) []string {
	var names []string
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func TestGoldenImagesUpToDate(t *testing.T) {
	imgs := goldenImages()
	if *update {
		writeGolden(t, imgs)
	}
	for _, name := range goldenNames(imgs) {
		got, err := os.ReadFile(filepath.Join("testdata/images", name))
		if err != nil {
			t.Fatalf("%v (run with -update)", err)
		}
		if !bytes.Equal(got, imgs[name]) {
			t.Errorf("testdata/images/%s differs from what the builder makes now; run with -update", name)
		}
	}
}

func writeGolden(t *testing.T, imgs map[string][]byte) {
	t.Helper()
	if err := os.MkdirAll("testdata/images", 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range imgs {
		if err := os.WriteFile(filepath.Join("testdata/images", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ver, err := exec.Command("esptool", "version").Output()
	if err != nil {
		t.Fatalf("esptool not available to record its output: %v", err)
	}
	lines := strings.Fields(string(ver))
	if want := filepath.Base(esptoolDir); "esptool-"+lines[len(lines)-1] != want {
		t.Fatalf("esptool version %q, want %s (change esptoolDir to record another version)", lines[len(lines)-1], want)
	}
	if err := os.MkdirAll(esptoolDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(esptoolDir, "VERSION"), ver, 0o644); err != nil {
		t.Fatal(err)
	}
	for name := range imgs {
		cmd := exec.Command("esptool", "image-info", filepath.Join("testdata/images", name))
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "COLUMNS=200")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("esptool image-info %s: %v\n%s", name, err, out)
		}
		txt := strings.TrimSuffix(name, ".bin") + ".txt"
		if err := os.WriteFile(filepath.Join(esptoolDir, txt), out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// esptoolInfo is what the test reads back from esptool's image-info output.
type esptoolInfo struct {
	fields   map[string]string // "Key: value" lines, first occurrence
	segments []string          // rows of the segment table
	appInfo  bool              // an "Application Information" section
}

var segRow = regexp.MustCompile(`^\s+\d+\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+.*$`)

func readEsptool(t *testing.T, path string) esptoolInfo {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	info := esptoolInfo{fields: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "Application Information":
			info.appInfo = true
		case segRow.MatchString(line):
			info.segments = append(info.segments, strings.Join(strings.Fields(line), " "))
		default:
			if k, v, ok := strings.Cut(line, ": "); ok {
				if _, seen := info.fields[k]; !seen {
					info.fields[k] = v
				}
			}
		}
	}
	return info
}

// esptoolView renders img the way esptool prints the fields compared.
func esptoolView(img *esp32image.Image) (map[string]string, []string) {
	h := img.Header
	f := map[string]string{
		"Segments":              strconv.Itoa(len(img.Segments)),
		"Entry point":           fmt.Sprintf("%#x", h.EntryAddr),
		"Flash size":            h.FlashSizeName(),
		"Flash freq":            h.FlashFreqName(),
		"Flash mode":            h.SPIMode.String(),
		"Chip ID":               fmt.Sprintf("%d (%s)", uint16(h.ChipID), esptoolChipName(h.ChipID)),
		"Minimal chip revision": fmt.Sprintf("v%d.%d, (legacy min_rev = %d)", h.MinChipRevFull/100, h.MinChipRevFull%100, h.MinChipRev),
		"Maximal chip revision": fmt.Sprintf("v%d.%d", h.MaxChipRevFull/100, h.MaxChipRevFull%100),
	}
	if img.ChecksumValid {
		f["Checksum"] = fmt.Sprintf("0x%02x (valid)", img.Checksum)
	} else {
		f["Checksum"] = fmt.Sprintf("0x%02x (invalid", img.Checksum) // esptool adds the computed value
	}
	if img.SHA256Valid != nil {
		if *img.SHA256Valid {
			f["Validation hash"] = hex.EncodeToString(img.SHA256) + " (valid)"
		} else {
			f["Validation hash"] = "(invalid)"
		}
	}
	if d := img.AppDesc; d != nil {
		f["Project name"] = d.ProjectName
		f["App version"] = d.Version
		f["Compile time"] = d.Date + " " + d.Time
		f["ELF file SHA256"] = hex.EncodeToString(d.ELFSHA256[:])
		f["ESP-IDF"] = d.IDFVersion
		f["Minimal eFuse block revision"] = fmt.Sprintf("%d.%d", d.MinEfuseBlkRevFull/100, d.MinEfuseBlkRevFull%100)
		f["Maximal eFuse block revision"] = fmt.Sprintf("%d.%d", d.MaxEfuseBlkRevFull/100, d.MaxEfuseBlkRevFull%100)
		if d.MMUPageSize != 0 {
			f["MMU page size"] = fmt.Sprintf("%d KB", (1<<d.MMUPageSize)/1024)
		}
		f["Secure version"] = strconv.FormatUint(uint64(d.SecureVersion), 10)
	}
	var segs []string
	for i, s := range img.Segments {
		segs = append(segs, fmt.Sprintf("%d 0x%05x 0x%08x 0x%08x %s", i, s.Length, s.LoadAddr,
			s.Offset-esp32image.SegmentHdrLen, strings.Join(h.ChipID.MemoryTypes(s.LoadAddr), ", ")))
	}
	return f, segs
}

// esptoolChipName turns "esp32c61" into esptool's "ESP32-C61".
func esptoolChipName(c esp32image.ChipID) string {
	s := strings.ToUpper(c.String())
	if s == "ESP32" {
		return s
	}
	return "ESP32-" + strings.TrimPrefix(s, "ESP32")
}

func TestGoldenAgreesWithEsptool(t *testing.T) {
	imgs := goldenImages()
	for _, name := range goldenNames(imgs) {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata/images", name))
			if err != nil {
				t.Fatal(err)
			}
			info := readEsptool(t, filepath.Join(esptoolDir, strings.TrimSuffix(name, ".bin")+".txt"))
			img, perr := esp32image.ParseLenient(data)
			if img == nil {
				t.Fatalf("ParseLenient: %v", perr)
			}
			esptoolValid := strings.HasSuffix(info.fields["Checksum"], "(valid)") &&
				!strings.HasSuffix(info.fields["Validation hash"], "(invalid)")
			if (perr == nil) != esptoolValid {
				t.Errorf("Parse error %v, but esptool says checksum %q, hash %q",
					perr, info.fields["Checksum"], info.fields["Validation hash"])
			}
			if got, want := img.AppDesc != nil, info.appInfo; got != want {
				t.Errorf("app desc found = %v, esptool shows application information = %v", got, want)
			}
			view, segs := esptoolView(img)
			for k, want := range view {
				got, ok := info.fields[k]
				if !ok {
					t.Errorf("esptool printed no %q; we have %q", k, want)
					continue
				}
				if strings.HasSuffix(want, "(invalid") || want == "(invalid)" {
					if !strings.Contains(got, "(invalid") {
						t.Errorf("%s: esptool %q, we say invalid", k, got)
					}
					continue
				}
				if got != want {
					t.Errorf("%s: esptool %q, parsed %q", k, got, want)
				}
			}
			for _, k := range []string{"Validation hash", "Project name", "MMU page size"} {
				if _, ours := view[k]; !ours && info.fields[k] != "" {
					t.Errorf("esptool printed %s %q, we have none", k, info.fields[k])
				}
			}
			if strings.Join(segs, "\n") != strings.Join(info.segments, "\n") {
				t.Errorf("segments:\nesptool:\n%s\nparsed:\n%s", strings.Join(info.segments, "\n"), strings.Join(segs, "\n"))
			}
		})
	}
}
