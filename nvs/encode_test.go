package nvs_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/nvs"
)

// allTypes has one entry of every type, in two namespaces.
func allTypes() []nvs.Entry {
	return []nvs.Entry{
		nvs.NamespaceEntry("one"),
		{Namespace: "one", Key: "u8", Type: nvs.TypeU8, Value: uint8(255)},
		{Namespace: "one", Key: "i8", Type: nvs.TypeI8, Value: int8(-128)},
		{Namespace: "one", Key: "u16", Type: nvs.TypeU16, Value: uint16(65535)},
		{Namespace: "one", Key: "i16", Type: nvs.TypeI16, Value: int16(-32768)},
		{Namespace: "one", Key: "u32", Type: nvs.TypeU32, Value: uint32(1 << 31)},
		{Namespace: "one", Key: "i32", Type: nvs.TypeI32, Value: int32(-1)},
		{Namespace: "one", Key: "u64", Type: nvs.TypeU64, Value: uint64(1<<64 - 1)},
		{Namespace: "one", Key: "i64", Type: nvs.TypeI64, Value: int64(-1 << 63)},
		nvs.NamespaceEntry("two"),
		{Namespace: "two", Key: "str", Type: nvs.TypeString, Value: "grüße ✓"},
		{Namespace: "two", Key: "empty", Type: nvs.TypeString, Value: ""},
		{Namespace: "two", Key: "blob", Type: nvs.TypeBlob, Value: seqBytes(1500, 7)},
		{Namespace: "two", Key: "noblob", Type: nvs.TypeBlob, Value: []byte{}},
	}
}

func TestRoundTrip(t *testing.T) {
	long := strings.Repeat("0123456789", 396) // 3960 bytes + NUL
	tests := []struct {
		name    string
		entries []nvs.Entry
		opts    nvs.Options
	}{
		{"all types v2", allTypes(), nvs.Options{Size: 0x3000}},
		{"all types v1", allTypes(), nvs.Options{Size: 0x3000, Version: nvs.Version1}},
		{"all types 64 KiB", allTypes(), nvs.Options{Size: 0x10000, Version: nvs.Version2}},
		{"multi-page blob", []nvs.Entry{
			{Namespace: "b", Key: "a", Type: nvs.TypeU8, Value: uint8(1)},
			{Namespace: "b", Key: "big", Type: nvs.TypeBlob, Value: seqBytes(20000, 3)},
			{Namespace: "b", Key: "z", Type: nvs.TypeString, Value: long},
		}, nvs.Options{Size: 0x9000}},
		{"implicit namespaces, duplicates", []nvs.Entry{
			{Namespace: "a", Key: "k", Type: nvs.TypeU8, Value: uint8(1)},
			{Namespace: "b", Key: "k", Type: nvs.TypeU8, Value: uint8(2)},
			{Namespace: "a", Key: "k", Type: nvs.TypeU8, Value: uint8(3)},
			{Namespace: "a", Key: "k", Type: nvs.TypeString, Value: "same key, other type"},
		}, nvs.Options{Size: 0x3000}},
		{"provisioning", provisioning(), nvs.Options{Size: 0x6000}},
		{"blob of the maximum 127 chunks", []nvs.Entry{blob("n", "b", seqBytes(3968+126*4000, 5))},
			nvs.Options{Size: 129 * nvs.PageSize}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := nvs.Encode(tt.entries, tt.opts)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if len(img) != tt.opts.Size {
				t.Errorf("len(img) = %#x, want %#x", len(img), tt.opts.Size)
			}
			got, err := nvs.Decode(img)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if want := normalize(tt.entries); !reflect.DeepEqual(got, want) {
				t.Errorf("Decode(Encode(x)):\n got %v\nwant %v", got, want)
			}
			// The runtime needs at least one erased page.
			last := img[len(img)-nvs.PageSize:]
			if !bytes.Equal(last, bytes.Repeat([]byte{0xFF}, nvs.PageSize)) {
				t.Errorf("the last page is not erased")
			}
		})
	}
}

func provisioning() []nvs.Entry {
	return nvs.Strings("prov",
		nvs.KV{Key: "device_key", Value: "dk_7f3a9c2e41b84d0f"},
		nvs.KV{Key: "client_id", Value: "dev-7f3a9c2e41b84d0f"},
		nvs.KV{Key: "client_secret", Value: "Zq8vN2kR5tWx9LmP3sHd7YbC4fJg6AeU"},
		nvs.KV{Key: "token_url", Value: "https://id.example.com/realms/espmdm/protocol/openid-connect/token"},
		nvs.KV{Key: "base_url", Value: "https://mdm.example.com/iot"},
		nvs.KV{Key: "mqtt_url", Value: "mqtts://mqtt.example.com:8883"},
		nvs.KV{Key: "wifi_ssid", Value: "Factory Floor 2.4G"},
		nvs.KV{Key: "wifi_password", Value: `pa,ss "word" ✓`},
	)
}

// TestStringsMatchesGenerator builds the provisioning partition with the
// Strings helper and compares it with the generator's image of the same CSV.
func TestStringsMatchesGenerator(t *testing.T) {
	fromCSV := readCSVFile(t, "provisioning")
	var pairs []nvs.KV
	for _, e := range fromCSV {
		if e.Type == nvs.TypeString {
			pairs = append(pairs, nvs.KV{Key: e.Key, Value: e.Value.(string)})
		}
	}
	if len(pairs) != 8 {
		t.Fatalf("provisioning.csv has %d strings, want 8", len(pairs))
	}
	got, err := nvs.Encode(nvs.Strings("prov", pairs...), nvs.Options{Size: 0x6000})
	if err != nil {
		t.Fatal(err)
	}
	if want := golden(t, "provisioning"); !bytes.Equal(got, want) {
		t.Errorf("Strings partition differs from the generator's: %s", firstDiff(got, want))
	}
	if !reflect.DeepEqual(nvs.Strings("prov", pairs...), fromCSV) {
		t.Errorf("Strings(...) = %v, want the CSV entries %v", nvs.Strings("prov", pairs...), fromCSV)
	}
}

func pageState(img []byte, p int) uint32 { return binary.LittleEndian.Uint32(img[p*nvs.PageSize:]) }

// TestLongStrings covers strings of 3969..4000 bytes with their NUL, which
// the generator cannot write (it crashes); they take a page of their own.
func TestLongStrings(t *testing.T) {
	for _, n := range []int{3967, 3968, 3980, 3999} { // bytes without the NUL
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s := strings.Repeat("é", n/2) + strings.Repeat("x", n%2)
			entries := []nvs.Entry{
				nvs.NamespaceEntry("ns"),
				{Namespace: "ns", Key: "before", Type: nvs.TypeU8, Value: uint8(1)},
				{Namespace: "ns", Key: "long", Type: nvs.TypeString, Value: s},
				{Namespace: "ns", Key: "after", Type: nvs.TypeU8, Value: uint8(2)},
			}
			img, err := nvs.Encode(entries, nvs.Options{Size: 0x4000})
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := nvs.Decode(img)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, entries) {
				t.Errorf("round trip changed the entries")
			}
			// page 1 holds the string alone, starting at entry 0.
			e := img[nvs.PageSize+64:]
			if string(e[8:12]) != "long" || e[1] != 0x21 {
				t.Fatalf("page 1 entry 0 is not the string: % x", e[:32])
			}
			if span, want := int(e[2]), 1+(n+1+31)/32; span != want {
				t.Errorf("span = %d, want %d", span, want)
			}
			if got, want := pageState(img, 0), uint32(0xFFFFFFFC); got != want {
				t.Errorf("page 0 state = %#x, want FULL %#x", got, want)
			}
		})
	}
	t.Run("4000 bytes without the NUL is too long", func(t *testing.T) {
		_, err := nvs.Encode([]nvs.Entry{{Namespace: "n", Key: "k", Type: nvs.TypeString, Value: strings.Repeat("x", 4000)}},
			nvs.Options{Size: 0x3000})
		if !errors.Is(err, nvs.ErrInvalid) {
			t.Errorf("Encode error = %v, want ErrInvalid", err)
		}
	})
}

// TestReopenNamespace checks that a namespace row naming an earlier
// namespace switches back to it (the generator keeps the latest one).
func TestReopenNamespace(t *testing.T) {
	src := "key,type,encoding,value\n" +
		"cfg,namespace,,\nx,data,u8,1\n" +
		"net,namespace,,\ny,data,u8,2\n" +
		"cfg,namespace,,\nz,data,u8,3\n"
	entries, err := nvs.ReadCSV(strings.NewReader(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	img, err := nvs.Encode(entries, nvs.Options{Size: 0x3000})
	if err != nil {
		t.Fatal(err)
	}
	got, err := nvs.Decode(img)
	if err != nil {
		t.Fatal(err)
	}
	want := []nvs.Entry{
		nvs.NamespaceEntry("cfg"), u8("cfg", "x", 1),
		nvs.NamespaceEntry("net"), u8("net", "y", 2),
		u8("cfg", "z", 3),
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Decode:\n got %v\nwant %v", got, want)
	}
	// Two namespace entries only: cfg is not declared twice.
	if n := bytes.Count(img[:nvs.PageSize], []byte("cfg\x00")); n != 1 {
		t.Errorf("image holds %d namespace entries for cfg, want 1", n)
	}
}

func TestEncodeSize(t *testing.T) {
	tests := []struct {
		size    int
		wantErr string
	}{
		{0, "below the minimum 0x3000"},
		{0x1000, "below the minimum 0x3000"},
		{0x2000, "below the minimum 0x3000"},
		{0x3001, "not a multiple of 4096"},
		{0x3000, ""},
		{0x6000, ""},
	}
	for _, tt := range tests {
		img, err := nvs.Encode(provisioning(), nvs.Options{Size: tt.size})
		if tt.wantErr == "" {
			if err != nil || len(img) != tt.size {
				t.Errorf("Encode(size %#x) = %d bytes, %v; want %#x bytes", tt.size, len(img), err, tt.size)
			}
			continue
		}
		if !errors.Is(err, nvs.ErrInvalid) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Encode(size %#x) error = %v, want ErrInvalid mentioning %q", tt.size, err, tt.wantErr)
		}
	}
}

func manyU8(n int) []nvs.Entry {
	var es []nvs.Entry
	for i := range n {
		es = append(es, nvs.Entry{Namespace: "n", Key: fmt.Sprintf("k%d", i), Type: nvs.TypeU8, Value: uint8(i)})
	}
	return es
}

func TestEncodeNoSpace(t *testing.T) {
	// 0x3000 has two data pages of 126 entries: the namespace plus 251 items fit.
	if _, err := nvs.Encode(manyU8(251), nvs.Options{Size: 0x3000}); err != nil {
		t.Errorf("251 items in 0x3000: %v", err)
	}
	tests := []struct {
		name    string
		entries []nvs.Entry
		size    int
	}{
		{"one item too many", manyU8(252), 0x3000},
		{"blob bigger than the partition", []nvs.Entry{blob("n", "b", make([]byte, 9000))}, 0x3000},
		{"strings on too many pages", []nvs.Entry{
			str("n", "a", strings.Repeat("a", 3000)),
			str("n", "b", strings.Repeat("b", 3000)),
			str("n", "c", strings.Repeat("c", 3000)),
		}, 0x3000},
	}
	for _, tt := range tests {
		_, err := nvs.Encode(tt.entries, nvs.Options{Size: tt.size})
		if !errors.Is(err, nvs.ErrNoSpace) {
			t.Errorf("%s: error = %v, want ErrNoSpace", tt.name, err)
		}
	}
}

func TestEncodeInvalid(t *testing.T) {
	manyNS := make([]nvs.Entry, 255)
	for i := range manyNS {
		manyNS[i] = nvs.NamespaceEntry(fmt.Sprintf("ns%d", i))
	}
	tests := []struct {
		name    string
		entries []nvs.Entry
		opts    nvs.Options
	}{
		{"key of 16 bytes", []nvs.Entry{u8("n", "0123456789abcdef", 1)}, nvs.Options{}},
		{"key of 15 characters but 16 bytes", []nvs.Entry{u8("n", "é0123456789abcd", 1)}, nvs.Options{}},
		{"empty key", []nvs.Entry{u8("n", "", 1)}, nvs.Options{}},
		{"key with NUL", []nvs.Entry{u8("n", "a\x00b", 1)}, nvs.Options{}},
		{"empty namespace", []nvs.Entry{u8("", "k", 1)}, nvs.Options{}},
		{"namespace name too long", []nvs.Entry{nvs.NamespaceEntry("a_very_long_namespace")}, nvs.Options{}},
		{"wrong Go type", []nvs.Entry{{Namespace: "n", Key: "k", Type: nvs.TypeU16, Value: 5}}, nvs.Options{}},
		{"string as blob", []nvs.Entry{{Namespace: "n", Key: "k", Type: nvs.TypeBlob, Value: "x"}}, nvs.Options{}},
		{"unknown type", []nvs.Entry{{Namespace: "n", Key: "k", Type: 99, Value: 1}}, nvs.Options{}},
		{"255 namespaces", manyNS, nvs.Options{Size: 0x10000}},
		{"format version 3", nil, nvs.Options{Version: 3}},
		{"v1 blob over 1984 bytes", []nvs.Entry{blob("n", "b", make([]byte, 1985))}, nvs.Options{Version: 1}},
		{"v1 string over 1984 bytes", []nvs.Entry{str("n", "s", strings.Repeat("s", 1984))}, nvs.Options{Version: 1}},
		{"blob of 128 chunks", []nvs.Entry{blob("n", "b", make([]byte, 127*4000+1))}, nvs.Options{Size: 0x100000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.opts.Size == 0 {
				tt.opts.Size = 0x3000
			}
			_, err := nvs.Encode(tt.entries, tt.opts)
			if !errors.Is(err, nvs.ErrInvalid) {
				t.Errorf("Encode error = %v, want ErrInvalid", err)
			}
		})
	}
	// 254 namespaces are fine.
	if _, err := nvs.Encode(manyNS[:254], nvs.Options{Size: 0x10000}); err != nil {
		t.Errorf("254 namespaces: %v", err)
	}
}

func TestTypeNames(t *testing.T) {
	for _, name := range []string{"namespace", "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "string", "blob"} {
		typ, err := nvs.ParseType(strings.ToUpper(name))
		if err != nil {
			t.Errorf("ParseType(%q): %v", name, err)
			continue
		}
		if got := typ.String(); got != name {
			t.Errorf("ParseType(%q).String() = %q", name, got)
		}
	}
	if _, err := nvs.ParseType("float"); !errors.Is(err, nvs.ErrInvalid) {
		t.Errorf("ParseType(float) error = %v, want ErrInvalid", err)
	}
	if got := nvs.Type(0).String(); got != "Type(0)" {
		t.Errorf("Type(0).String() = %q", got)
	}
}
