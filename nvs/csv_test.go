package nvs_test

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/espmdm/espmdm/nvs"
)

func TestReadCSV(t *testing.T) {
	fsys := fstest.MapFS{
		"certs/ca.der": {Data: []byte{0x30, 0x82, 0x00}},
		"note.txt":     {Data: []byte("from file")},
		"n.txt":        {Data: []byte(" 42\n")},
	}
	tests := []struct {
		name string
		src  string
		want []nvs.Entry
	}{
		{"empty input", "", nil},
		{"header only", "key,type,encoding,value\n", nil},
		{
			"comments, BOM, CRLF, case",
			"\uFEFFkey,type,encoding,value\r\n# comment\r\nns,NAMESPACE,,\r\na,Data,U8,0x1f\r\nb,data,I16,-0x10\r\n",
			[]nvs.Entry{nvs.NamespaceEntry("ns"), u8("ns", "a", 31),
				{Namespace: "ns", Key: "b", Type: nvs.TypeI16, Value: int16(-16)}},
		},
		{
			"columns in another order, short namespace row",
			"value,encoding,type,key\n,,namespace,ns\n9,u8,data,x\n",
			[]nvs.Entry{nvs.NamespaceEntry("ns"), u8("ns", "x", 9)},
		},
		{
			"namespace row with two fields",
			"key,type,encoding,value\nns,namespace\nx,data,u8,1\n",
			[]nvs.Entry{nvs.NamespaceEntry("ns"), u8("ns", "x", 1)},
		},
		{
			"blob encodings",
			"key,type,encoding,value\nns,namespace,,\n" +
				"h,data,hex2bin, 00FFab \n" +
				"b,data,base64,AAEC\n" +
				"np,data,base64,AAECAw\n" +
				"nl,data,base64,\"AAEC\nAwQ=\"\n" +
				"r,data,binary,raw\n",
			[]nvs.Entry{nvs.NamespaceEntry("ns"),
				blob("ns", "h", []byte{0, 0xFF, 0xAB}),
				blob("ns", "b", []byte{0, 1, 2}),
				blob("ns", "np", []byte{0, 1, 2, 3}),
				blob("ns", "nl", []byte{0, 1, 2, 3, 4}),
				blob("ns", "r", []byte("raw"))},
		},
		{
			"strings keep their spaces and quotes",
			"key,type,encoding,value\nns,namespace,,\ns,data,string, a \"b\" \nq,data,string,\"x,\"\"y\"\"\nz\"\ne,data,string,\n",
			[]nvs.Entry{nvs.NamespaceEntry("ns"), str("ns", "s", ` a "b" `), str("ns", "q", "x,\"y\"\nz"), str("ns", "e", "")},
		},
		{
			"file rows",
			"key,type,encoding,value\nns,namespace,,\nca,file,binary,certs/ca.der\nnote,file,string,note.txt\nn,file,u16,n.txt\n",
			[]nvs.Entry{nvs.NamespaceEntry("ns"), blob("ns", "ca", []byte{0x30, 0x82, 0x00}), str("ns", "note", "from file"),
				{Namespace: "ns", Key: "n", Type: nvs.TypeU16, Value: uint16(42)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := nvs.ReadCSV(strings.NewReader(tt.src), fsys)
			if err != nil {
				t.Fatalf("ReadCSV: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ReadCSV:\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

// TestReadCSVBase64 checks base64 values against what the generator's
// binascii.a2b_base64 makes of them (outputs taken from Python 3.11);
// golden/base64_quirks.bin is the generator's image of the same values.
func TestReadCSVBase64(t *testing.T) {
	tests := []struct {
		value string
		want  string
	}{
		{"SGVsbG8=", "Hello"},
		{"=QUJD", "ABC"},        // '=' starting a group is skipped
		{"QUJD=QUJD", "ABCABC"}, // so is one after a complete group
		{"QQ==QUJD", "A"},       // padding completing a group ends the value
		{"Q===QQ==", "A\x04"},   // '=' after one character is skipped
		{"QQ=x=QUJD", "A\x0c"},  // a character between '=' restarts the count
		{"QUJ=D===", "AB"},      // one '=' completes a group of three
		{"QUJD====", "ABC"},     // excess padding
		{"QU JD\nRk==", "ABCF"}, // blanks and line breaks are skipped
		{"SGVsbG8=\nV29ybGQ=", "Hello"},
		{"QUJDRA", "ABCD"}, // padding is optional here, not in the generator
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			src := "key,type,encoding,value\nns,namespace,,\nb,data,base64,\"" + tt.value + "\"\n"
			got, err := nvs.ReadCSV(strings.NewReader(src), nil)
			if err != nil {
				t.Fatalf("ReadCSV: %v", err)
			}
			if len(got) != 2 || !reflect.DeepEqual(got[1].Value, []byte(tt.want)) {
				t.Errorf("ReadCSV(%q) = %v, want blob %q", tt.value, got, tt.want)
			}
		})
	}
}

func TestReadCSVErrors(t *testing.T) {
	const h = "key,type,encoding,value\n"
	tests := []struct {
		name     string
		src      string
		wantLine int
	}{
		{"missing column", "key,type,value\nns,namespace,\n", 1},
		{"data before any namespace", h + "x,data,u8,1\n", 2},
		{"unknown row type", h + "ns,namespace,,\nx,blob,u8,1\n", 3},
		{"unknown encoding", h + "ns,namespace,,\nx,data,float,1.5\n", 3},
		{"u8 out of range", h + "ns,namespace,,\nx,data,u8,256\n", 3},
		{"i8 out of range", h + "ns,namespace,,\nx,data,i8,-129\n", 3},
		{"negative unsigned", h + "ns,namespace,,\nx,data,u32,-1\n", 3},
		{"not a number", h + "ns,namespace,,\nx,data,i32,12abc\n", 3},
		{"odd hex", h + "ns,namespace,,\nx,data,hex2bin,abc\n", 3},
		{"bad hex", h + "ns,namespace,,\nx,data,hex2bin,zz\n", 3},
		{"bad base64", h + "ns,namespace,,\nx,data,base64,A\n", 3},
		{"key too long", h + "ns,namespace,,\n0123456789abcdef,data,u8,1\n", 3},
		{"empty key", h + "ns,namespace,,\n,data,u8,1\n", 3},
		{"namespace too long", h + "0123456789abcdef,namespace,,\n", 2},
		{"file without a file system", h + "ns,namespace,,\nx,file,binary,a.bin\n", 3},
		{"comment lines count", h + "# one\n# two\nns,namespace,,\nx,data,u8,x\n", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := nvs.ReadCSV(strings.NewReader(tt.src), nil)
			var ce *nvs.CSVError
			if !errors.As(err, &ce) || !errors.Is(err, nvs.ErrInvalid) {
				t.Fatalf("ReadCSV error = %v, want a *CSVError wrapping ErrInvalid", err)
			}
			if ce.Line != tt.wantLine {
				t.Errorf("CSVError.Line = %d, want %d (%v)", ce.Line, tt.wantLine, err)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := nvs.ReadCSV(strings.NewReader(h+"ns,namespace,,\nx,file,binary,nope.bin\n"), fstest.MapFS{})
		if !errors.Is(err, nvs.ErrInvalid) || !strings.Contains(err.Error(), "nope.bin") {
			t.Errorf("error = %v, want ErrInvalid naming the file", err)
		}
	})
}

func TestWriteCSV(t *testing.T) {
	entries := []nvs.Entry{
		nvs.NamespaceEntry("empty"),
		nvs.NamespaceEntry("ns"),
		u8("ns", "a", 1),
		{Namespace: "ns", Key: "big", Type: nvs.TypeU64, Value: uint64(18446744073709551615)},
		{Namespace: "ns", Key: "neg", Type: nvs.TypeI64, Value: int64(-9223372036854775808)},
		str("ns", "s", "x, \"y\"\nz"),
		str("ns", "#hash", " lead"),
		blob("other", "b", []byte{0, 1, 2}),
		u8("ns", "back", 2),
	}
	var buf bytes.Buffer
	if err := nvs.WriteCSV(&buf, entries); err != nil {
		t.Fatal(err)
	}
	want := "key,type,encoding,value\n" +
		"empty,namespace,,\n" +
		"ns,namespace,,\n" +
		"a,data,u8,1\n" +
		"big,data,u64,18446744073709551615\n" +
		"neg,data,i64,-9223372036854775808\n" +
		"s,data,string,\"x, \"\"y\"\"\nz\"\n" +
		"\"#hash\",data,string,\" lead\"\n" +
		"other,namespace,,\n" +
		"b,data,base64,AAEC\n" +
		"ns,namespace,,\n" +
		"back,data,u8,2\n"
	if got := buf.String(); got != want {
		t.Errorf("WriteCSV:\n got %q\nwant %q", got, want)
	}
	got, err := nvs.ReadCSV(&buf, nil)
	if err != nil {
		t.Fatalf("ReadCSV(WriteCSV(x)): %v", err)
	}
	wantBack := append([]nvs.Entry{}, entries[:7]...)
	wantBack = append(wantBack, nvs.NamespaceEntry("other"), entries[7], nvs.NamespaceEntry("ns"), entries[8])
	if !reflect.DeepEqual(got, wantBack) {
		t.Errorf("ReadCSV(WriteCSV(x)):\n got %v\nwant %v", got, wantBack)
	}

	for _, bad := range []nvs.Entry{
		str("ns", "cr", "a\rb"),
		str("ns", "hash", "a\n#b"), // the generator drops lines starting with '#', quoted or not
		str("ns", "k\n#", "a"),
		str("n\n#", "k", "a"),
		{Namespace: "ns", Key: "k", Type: nvs.TypeU8, Value: 1},
	} {
		if err := nvs.WriteCSV(&bytes.Buffer{}, []nvs.Entry{bad}); !errors.Is(err, nvs.ErrInvalid) {
			t.Errorf("WriteCSV(%v) error = %v, want ErrInvalid", bad, err)
		}
	}
}

// TestWriteCSVGolden writes every golden vector's decoded entries as CSV and
// checks that the generator's CSV reading (our ReadCSV) gets them back and
// that encoding them reproduces the image.
func TestWriteCSVGolden(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.name, func(t *testing.T) {
			img := golden(t, v.name)
			entries, err := nvs.Decode(img)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := nvs.WriteCSV(&buf, entries); err != nil {
				t.Fatal(err)
			}
			back, err := nvs.ReadCSV(&buf, nil)
			if err != nil {
				t.Fatal(err)
			}
			out, err := nvs.Encode(back, nvs.Options{Size: v.size, Version: v.version})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, img) {
				t.Errorf("image from the written CSV differs: %s", firstDiff(out, img))
			}
		})
	}
}
