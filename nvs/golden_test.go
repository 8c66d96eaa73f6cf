package nvs_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/nvs"
)

const goldenDir = "testdata/golden"

// vector is one image made by ESP-IDF's generator (see testdata/gen.sh).
type vector struct {
	name, csv string
	version   int
	size      int
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	f, err := os.Open(filepath.Join(goldenDir, "vectors.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var vs []vector
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		if len(fields) != 4 {
			t.Fatalf("vectors.txt: bad line %q", sc.Text())
		}
		version, err1 := strconv.Atoi(fields[2])
		size, err2 := strconv.ParseInt(fields[3], 0, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("vectors.txt: bad line %q", sc.Text())
		}
		vs = append(vs, vector{fields[0], fields[1], version, int(size)})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("vectors.txt lists no vectors")
	}
	return vs
}

func readCSVFile(t testing.TB, name string) []nvs.Entry {
	t.Helper()
	f, err := os.Open(filepath.Join(goldenDir, name+".csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := nvs.ReadCSV(f, os.DirFS(goldenDir))
	if err != nil {
		t.Fatalf("ReadCSV(%s): %v", name, err)
	}
	return entries
}

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// firstDiff describes where got and want first differ.
func firstDiff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("length %d, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at %#x (page %d, byte %d): got %#02x, want %#02x",
				i, i/nvs.PageSize, i%nvs.PageSize, got[i], want[i])
		}
	}
	return "equal"
}

func TestEncodeGolden(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.name, func(t *testing.T) {
			entries := readCSVFile(t, v.csv)
			want := readFile(t, v.name+".bin")
			got, err := nvs.Encode(entries, nvs.Options{Size: v.size, Version: v.version})
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Encode differs from the generator: %s", firstDiff(got, want))
			}
		})
	}
}

func TestDecodeGolden(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.name, func(t *testing.T) {
			want := readCSVFile(t, v.csv)
			got, err := nvs.Decode(readFile(t, v.name+".bin"))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Decode returned %d entries, want the %d of the CSV", len(got), len(want))
				for i := range max(len(got), len(want)) {
					var g, w string
					if i < len(got) {
						g = got[i].String()
					}
					if i < len(want) {
						w = want[i].String()
					}
					if g != w {
						t.Errorf("entry %d:\n got %.200s\nwant %.200s", i, g, w)
					}
				}
			}
		})
	}
}

// TestGoldenReencode checks that decoding a generator image and encoding the
// result again reproduces the image byte for byte.
func TestGoldenReencode(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.name, func(t *testing.T) {
			want := readFile(t, v.name+".bin")
			entries, err := nvs.Decode(want)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			got, err := nvs.Encode(entries, nvs.Options{Size: len(want), Version: v.version})
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("re-encoded image differs: %s", firstDiff(got, want))
			}
		})
	}
}

func TestGeneratorVersionRecorded(t *testing.T) {
	got := strings.TrimSpace(string(readFile(t, "GENERATOR_VERSION")))
	if want := "esp-idf-nvs-partition-gen 0.3.0"; got != want {
		t.Errorf("GENERATOR_VERSION = %q, want %q", got, want)
	}
}
