package coredump_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/coredump"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
)

// testdata/esp32c3.bin is the C3 ELF as ESP-IDF's build turns it into an
// app image (esptool elf2image --elf-sha256-offset 0xb0): its descriptor
// carries the ELF's SHA-256, which is how the server finds a dump's ELF.
func TestAppImageFixture(t *testing.T) {
	elf := readFile(t, c3ELF)
	image := readFile(t, "testdata/esp32c3.bin")
	img, err := esp32image.Parse(image)
	if err != nil {
		t.Fatalf("esp32image refuses the fixture: %v", err)
	}
	sum := sha256.Sum256(elf)
	if img.Header.ChipID != esp32image.ChipESP32C3 || img.AppDesc == nil || img.AppDesc.ProjectName != "test_core_dump" {
		t.Fatalf("image %+v, app descriptor %+v", img.Header, img.AppDesc)
	}
	if img.AppDesc.ELFSHA256 != sum {
		t.Errorf("app_elf_sha256 %x, want the ELF's SHA-256 %x", img.AppDesc.ELFSHA256, sum)
	}
	info, err := model.ReadCoredumpInfo(readFile(t, c3Dump))
	if err != nil || !info.MatchesELF(hex.EncodeToString(img.AppDesc.ELFSHA256[:])) {
		t.Errorf("the dump (%+v, %v) does not name the image's ELF", info, err)
	}

	// esptool still makes exactly these bytes from the ELF.
	esptool := os.Getenv("ESPTOOL")
	if esptool == "" {
		esptool = coredump.VenvBin("esptool")
	}
	if _, err := exec.LookPath(esptool); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("esptool %s is needed (make deps installs it): %v", coredump.EsptoolVersion, err)
		}
		t.Skipf("esptool is not installed (make deps): %v", err)
	}
	out := filepath.Join(t.TempDir(), "esp32c3.bin")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, esptool, "--chip", "esp32c3", "elf2image", "--elf-sha256-offset", "0xb0", "-o", out, c3ELF)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("esptool elf2image: %v\n%s", err, msg)
	}
	if made := readFile(t, out); !bytes.Equal(made, image) {
		t.Errorf("esptool made %d bytes that differ from testdata/esp32c3.bin (%d bytes): regenerate it with the command in testdata/README.md", len(made), len(image))
	}
}
