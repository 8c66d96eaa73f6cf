package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const nvsGolden = "../../../nvs/testdata/golden"

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestNVSGenerateMatchesGenerator(t *testing.T) {
	tests := []struct {
		csv, bin string
		args     []string
		label    string
	}{
		{"provisioning", "provisioning", []string{"0x6000"}, "V2 - Multipage Blob Support Enabled"},
		{"provisioning", "provisioning_64k", []string{"65536"}, "V2 - Multipage Blob Support Enabled"},
		{"blobs", "blobs", []string{"0x6000"}, "V2 - Multipage Blob Support Enabled"},
		{"v1_mixed", "v1_mixed", []string{"0x3000", "--version", "1"}, "V1 - Multipage Blob Support Disabled"},
		{"strings", "strings", []string{"0x6000", "--version=2"}, "V2 - Multipage Blob Support Enabled"},
	}
	for _, tt := range tests {
		t.Run(tt.bin, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.bin")
			args := append([]string{"nvs", "generate", filepath.Join(nvsGolden, tt.csv+".csv"), out}, tt.args...)
			code, stdout, stderr := runCLI(t, args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(filepath.Join(nvsGolden, tt.bin+".bin"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("output differs from %s.bin", tt.bin)
			}
			wantOut := "\nCreating NVS binary with version: " + tt.label + "\n\nCreated NVS binary: ===> " + out + "\n"
			if stdout != wantOut {
				t.Errorf("stdout = %q, want %q", stdout, wantOut)
			}
		})
	}
}

func TestNVSGenerateRelativeOutput(t *testing.T) {
	dir := t.TempDir()
	csv, err := filepath.Abs(filepath.Join(nvsGolden, "provisioning.csv"))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	code, stdout, stderr := runCLI(t, "nvs", "generate", csv, "sub/dir/p.bin", "0x3000")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wd, _ := os.Getwd()
	if want := "===> " + wd + "/sub/dir/p.bin\n"; !strings.HasSuffix(stdout, want) {
		t.Errorf("stdout = %q, want it to end with %q", stdout, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub", "dir", "p.bin")); err != nil {
		t.Error(err)
	}

	other := t.TempDir()
	code, stdout, stderr = runCLI(t, "nvs", "generate", "--outdir", other, csv, "q.bin", "0x3000")
	if code != 0 {
		t.Fatalf("--outdir: exit %d: %s", code, stderr)
	}
	if want := "===> " + other + "/q.bin\n"; !strings.HasSuffix(stdout, want) {
		t.Errorf("--outdir: stdout = %q, want it to end with %q", stdout, want)
	}
	if _, err := os.Stat(filepath.Join(other, "q.bin")); err != nil {
		t.Error(err)
	}
}

func TestNVSGenerateErrors(t *testing.T) {
	csv := filepath.Join(nvsGolden, "provisioning.csv")
	bad := filepath.Join(t.TempDir(), "bad.csv")
	if err := os.WriteFile(bad, []byte("key,type,encoding,value\nns,namespace,,\nx,data,u8,300\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"below 0x3000", []string{csv, "OUT", "0x2000"}, 1, "minimum 0x3000"},
		{"not a multiple of 4096", []string{csv, "OUT", "0x3100"}, 1, "multiple of 4096"},
		{"does not fit", []string{filepath.Join(nvsGolden, "blobs.csv"), "OUT", "0x3000"}, 1, "too small"},
		{"bad size", []string{csv, "OUT", "big"}, 2, "SIZE"},
		{"bad version", []string{"--version", "3", csv, "OUT", "0x3000"}, 2, "--version"},
		{"not .bin", []string{csv, "OUT.txt", "0x3000"}, 2, ".bin"},
		{"missing csv", []string{"nope.csv", "OUT", "0x3000"}, 1, "nope.csv"},
		{"bad value", []string{bad, "OUT", "0x3000"}, 1, "line 3"},
		{"too few arguments", []string{csv, "OUT"}, 1, "arg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			args := []string{"nvs", "generate"}
			for _, a := range tt.args {
				switch a {
				case "OUT":
					a = filepath.Join(dir, "out.bin")
				case "OUT.txt":
					a = filepath.Join(dir, "out.txt")
				}
				args = append(args, a)
			}
			code, _, stderr := runCLI(t, args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, tt.wantCode, tt.wantErr)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("a failed run left %d files behind", len(entries))
			}
		})
	}
}

func TestNVSDumpJSON(t *testing.T) {
	code, stdout, stderr := runCLI(t, "nvs", "dump", "--format", "json", filepath.Join(nvsGolden, "int_limits.bin"))
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.UseNumber()
	var got []map[string]any
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("output is not a JSON list: %v\n%s", err, stdout)
	}
	find := func(key string) map[string]any {
		for _, e := range got {
			if e["key"] == key {
				return e
			}
		}
		t.Fatalf("no entry %q in %s", key, stdout)
		return nil
	}
	for key, want := range map[string]string{
		"u64_max": "18446744073709551615",
		"i64_min": "-9223372036854775808",
		"u8_max":  "255",
		"i8_min":  "-128",
	} {
		e := find(key)
		if n, ok := e["value"].(json.Number); !ok || n.String() != want {
			t.Errorf("%s value = %#v, want the number %s", key, e["value"], want)
		}
		if e["namespace"] != "limits" || e["type"] != key[:strings.IndexByte(key, '_')] {
			t.Errorf("%s: namespace %v type %v", key, e["namespace"], e["type"])
		}
	}

	code, stdout, _ = runCLI(t, "nvs", "dump", "--format=json", filepath.Join(nvsGolden, "blobs.bin"))
	if code != 0 {
		t.Fatal("dump blobs.bin failed")
	}
	var blobs []struct {
		Key, Type string
		Value     json.RawMessage
	}
	if err := json.Unmarshal([]byte(stdout), &blobs); err != nil {
		t.Fatal(err)
	}
	wantBig, err := os.ReadFile(filepath.Join(nvsGolden, "files", "blob9000.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var sawBig bool
	for _, b := range blobs {
		if b.Key == "big" {
			sawBig = true
			var s string
			if err := json.Unmarshal(b.Value, &s); err != nil {
				t.Fatalf("big: value %s is not a string", b.Value)
			}
			got, err := base64.StdEncoding.DecodeString(s)
			if err != nil || b.Type != "blob" || !bytes.Equal(got, wantBig) {
				t.Errorf("big: type %q, value decodes to %d bytes (%v), want the 9000-byte file", b.Type, len(got), err)
			}
		}
	}
	if !sawBig {
		t.Error("no entry big in the blobs dump")
	}
}

func TestNVSDumpTextAndCSV(t *testing.T) {
	img := filepath.Join(nvsGolden, "provisioning.bin")
	code, stdout, _ := runCLI(t, "nvs", "dump", img)
	if code != 0 {
		t.Fatal("dump failed")
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 9 || !strings.HasPrefix(lines[0], "NAMESPACE") {
		t.Fatalf("text dump has %d lines, want a header and 8 entries:\n%s", len(lines), stdout)
	}
	if f := strings.Fields(lines[1]); len(f) != 4 || f[0] != "prov" || f[1] != "device_key" || f[2] != "string" || f[3] != `"dk_7f3a9c2e41b84d0f"` {
		t.Errorf("first entry line = %q", lines[1])
	}

	// dump --format csv | generate gives back the same image.
	for _, name := range []string{"provisioning", "blobs", "namespaces", "int_limits"} {
		dir := t.TempDir()
		code, stdout, _ = runCLI(t, "nvs", "dump", "--format", "csv", filepath.Join(nvsGolden, name+".bin"))
		if code != 0 {
			t.Fatalf("%s: dump failed", name)
		}
		csv := filepath.Join(dir, "x.csv")
		if err := os.WriteFile(csv, []byte(stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "x.bin")
		if code, _, stderr := runCLI(t, "nvs", "generate", csv, out, "0x6000"); code != 0 {
			t.Fatalf("%s: generate from the dump: %s", name, stderr)
		}
		got, _ := os.ReadFile(out)
		want, _ := os.ReadFile(filepath.Join(nvsGolden, name+".bin"))
		if len(want) > len(got) || !bytes.Equal(got[:len(want)], want) {
			t.Errorf("%s: image rebuilt from the CSV dump differs", name)
		}
	}
}

func TestNVSDumpErrors(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(nvsGolden, "provisioning.bin"))
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(good)
	corrupt[0x40+9] ^= 1 // namespace entry key: its CRC no longer matches
	path := filepath.Join(t.TempDir(), "corrupt.bin")
	if err := os.WriteFile(path, corrupt, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "csv", "json"} {
		code, stdout, stderr := runCLI(t, "nvs", "dump", "--format", format, path)
		if code == 0 || !strings.Contains(stderr, "offset 0x44") {
			t.Errorf("%s: exit %d, stderr %q; want a failure naming offset 0x44", format, code, stderr)
		}
		if stdout != "" {
			t.Errorf("%s: a corrupt image printed %q", format, stdout)
		}
	}
	if code, _, _ := runCLI(t, "nvs", "dump", "--format", "xml", path); code != 2 {
		t.Errorf("--format xml: exit %d, want 2", code)
	}
	if code, _, _ := runCLI(t, "nvs", "dump", "missing.bin"); code == 0 {
		t.Error("missing file: exit 0")
	}
}
