package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
)

func writeImage(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runImage(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), append([]string{"image", "info"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestImageInfoJSON(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	valid, lay := esp32imagetest.New(esp32image.ChipESP32S3, 3, true, &desc).Build()
	badSum := bytes.Clone(valid)
	badSum[lay.Checksum] ^= 1
	noDigest := esp32imagetest.New(esp32image.ChipESP32C6, 2, false, nil).Bytes()

	tests := []struct {
		name        string
		data        []byte
		wantCode    int
		wantChip    string
		wantVersion any // string or nil
		wantSum     bool
		wantSHA     any // bool or nil
	}{
		{"valid", valid, 0, "esp32s3", "1.4.2-rc1", true, true},
		{"bad checksum", badSum, 1, "esp32s3", "1.4.2-rc1", false, false},
		{"no digest, no desc", noDigest, 0, "esp32c6", nil, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runImage(t, "--json", writeImage(t, "app.bin", tt.data))
			if code != tt.wantCode {
				t.Fatalf("exit code = %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, stdout)
			}
			for _, k := range []string{"chip", "chip_id", "version", "project_name", "idf_version", "compile_date",
				"compile_time", "secure_version", "elf_sha256", "segments", "checksum_valid", "sha256_valid",
				"min_chip_rev_full", "max_chip_rev_full"} {
				if _, ok := got[k]; !ok {
					t.Errorf("key %q missing", k)
				}
			}
			if got["chip"] != tt.wantChip || got["version"] != tt.wantVersion ||
				got["checksum_valid"] != tt.wantSum || got["sha256_valid"] != tt.wantSHA {
				t.Errorf("chip=%v version=%v checksum_valid=%v sha256_valid=%v, want %v %v %v %v",
					got["chip"], got["version"], got["checksum_valid"], got["sha256_valid"],
					tt.wantChip, tt.wantVersion, tt.wantSum, tt.wantSHA)
			}
			if (tt.wantCode == 0) != (stderr == "") {
				t.Errorf("stderr = %q", stderr)
			}
		})
	}
}

func TestImageInfoJSONFields(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	data := esp32imagetest.New(esp32image.ChipESP32S3, 3, true, &desc).Bytes()
	code, stdout, _ := runImage(t, "--json", writeImage(t, "app.bin", data))
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	var got struct {
		ChipID         int    `json:"chip_id"`
		ProjectName    string `json:"project_name"`
		IDFVersion     string `json:"idf_version"`
		CompileDate    string `json:"compile_date"`
		CompileTime    string `json:"compile_time"`
		SecureVersion  int    `json:"secure_version"`
		ELFSHA256      string `json:"elf_sha256"`
		MaxChipRevFull int    `json:"max_chip_rev_full"`
		Segments       []struct {
			LoadAddr uint32   `json:"load_addr"`
			Length   int      `json:"length"`
			Memory   []string `json:"memory"`
		} `json:"segments"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatal(err)
	}
	if got.ChipID != 9 || got.ProjectName != "prov-demo-esp32s3" || got.IDFVersion != "v5.4.1-dirty" ||
		got.CompileDate != "Oct 30 2024" || got.CompileTime != "22:07:04" || got.SecureVersion != 3 ||
		got.MaxChipRevFull != 99 || len(got.ELFSHA256) != 64 {
		t.Errorf("got %+v", got)
	}
	if len(got.Segments) != 3 || got.Segments[0].LoadAddr != 0x3C010020 || got.Segments[0].Memory[0] != "DROM" {
		t.Errorf("segments = %+v", got.Segments)
	}
}

func TestImageInfoText(t *testing.T) {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32)
	data, lay := esp32imagetest.New(esp32image.ChipESP32, 3, true, &desc).Build()
	code, stdout, _ := runImage(t, writeImage(t, "app.bin", data))
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	for _, want := range []string{"Chip:              esp32 (id 0)", "App version:       1.4.2-rc1",
		"Checksum:          0x", "(valid)", "Project name:      prov-demo-esp32"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}
	// A truncated image still prints what could be read, and fails.
	code, stdout, stderr := runImage(t, writeImage(t, "cut.bin", data[:lay.Digest+3]))
	if code != 1 || !strings.Contains(stdout, "App version:       1.4.2-rc1") || !strings.Contains(stderr, "SHA-256 needs 32 bytes") {
		t.Errorf("truncated: code %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
}

func TestImageInfoFailures(t *testing.T) {
	tests := []struct {
		name     string
		args     func(t *testing.T) []string
		wantCode int
		wantErr  string
	}{
		{"not an image", func(t *testing.T) []string {
			return []string{writeImage(t, "x.bin", []byte("hello, world, this is not an image"))}
		}, 1, "bad image magic"},
		{"missing file", func(t *testing.T) []string {
			return []string{filepath.Join(t.TempDir(), "nope.bin")}
		}, 2, "no such file"},
		{"no argument", func(t *testing.T) []string { return nil }, 1, "accepts 1 arg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runImage(t, tt.args(t)...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("code %d stderr %q, want %d and %q (stdout %q)", code, stderr, tt.wantCode, tt.wantErr, stdout)
			}
		})
	}
}

func TestImageSample(t *testing.T) {
	out := filepath.Join(t.TempDir(), "sample.bin")
	code, stdout, stderr := runCLI(t, "image", "sample", "--chip", "esp32c3", "--version", "2.0.1", "--project", "demo", "-o", out)
	if code != 0 || !strings.Contains(stdout, "esp32c3 image, version 2.0.1") {
		t.Fatalf("image sample: exit %d, %q, %q", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "image", "info", "--json", out)
	var raw map[string]any
	if code != 0 || json.Unmarshal([]byte(stdout), &raw) != nil {
		t.Fatalf("image info of the sample: exit %d, %q, %q", code, stdout, stderr)
	}
	if raw["chip"] != "esp32c3" || raw["version"] != "2.0.1" || raw["project_name"] != "demo" || raw["sha256_valid"] != true {
		t.Errorf("sample image info = %v", raw)
	}
	for _, bad := range [][]string{{"--chip", "esp99", "-o", out}, {"--chip", "esp32"}, {"--version", strings.Repeat("v", 40), "-o", out}} {
		if code, _, stderr := runCLI(t, append([]string{"image", "sample"}, bad...)...); code == 0 || stderr == "" {
			t.Errorf("image sample %v: exit %d, stderr %q; want a refusal", bad, code, stderr)
		}
	}
}
