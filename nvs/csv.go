package nvs

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
)

// CSVError reports a problem on a line of an ESP-IDF NVS CSV file.
type CSVError struct {
	Line int
	Err  error
}

func (e *CSVError) Error() string { return fmt.Sprintf("nvs: csv line %d: %v", e.Line, e.Err) }

// Unwrap returns the underlying error, which wraps ErrInvalid.
func (e *CSVError) Unwrap() error { return e.Err }

// ReadCSV reads the CSV format of ESP-IDF's nvs_partition_gen:
//
//	key,type,encoding,value
//	prov,namespace,,
//	device_key,data,string,dk_7f3a
//	ca_cert,file,binary,certs/ca.der
//
// The header names the columns. Lines starting with '#' are comments. A
// namespace row makes later rows belong to it, also when it names a namespace
// used before. The type of the other rows is data (the value is in the CSV) or
// file (the value is a path, read from fsys, relative to the CSV's directory;
// fsys may be nil when there are no file rows). Encodings: u8, i8, u16, i16,
// u32, i32, u64, i64 (decimal, or hexadecimal with 0x), string, and for blobs
// hex2bin, base64 and binary (the bytes as they are). Errors are *CSVError
// values wrapping ErrInvalid.
func ReadCSV(r io.Reader, fsys fs.FS) ([]Entry, error) {
	src, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	src = bytes.TrimPrefix(src, []byte("\uFEFF"))
	cr := csv.NewReader(bytes.NewReader(src))
	cr.Comment = '#'
	cr.FieldsPerRecord = -1
	cr.LazyQuotes = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	if err != nil {
		return nil, csvErr(err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.ToLower(strings.TrimSpace(h))] = i
	}
	for _, name := range []string{"key", "type", "encoding", "value"} {
		if _, ok := col[name]; !ok {
			return nil, &CSVError{Line: 1, Err: fmt.Errorf("%w: the header has no %q column", ErrInvalid, name)}
		}
	}
	var out []Entry
	ns := ""
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, csvErr(err)
		}
		line, _ := cr.FieldPos(0)
		field := func(name string) string {
			if i := col[name]; i < len(rec) {
				return rec[i]
			}
			return ""
		}
		key := field("key")
		kind := strings.ToLower(strings.TrimSpace(field("type")))
		enc := strings.ToLower(strings.TrimSpace(field("encoding")))
		value := field("value")
		fail := func(err error) ([]Entry, error) { return nil, &CSVError{Line: line, Err: err} }
		switch kind {
		case "namespace":
			if err := checkKey(key, "namespace name"); err != nil {
				return fail(err)
			}
			ns = key
			out = append(out, NamespaceEntry(ns))
			continue
		case "data", "file":
		default:
			return fail(fmt.Errorf("%w: type %q (want namespace, data or file)", ErrInvalid, field("type")))
		}
		if ns == "" {
			return fail(fmt.Errorf("%w: %q comes before the first namespace row", ErrInvalid, key))
		}
		if err := checkKey(key, "key"); err != nil {
			return fail(err)
		}
		raw := []byte(value)
		if kind == "file" {
			if fsys == nil {
				return fail(fmt.Errorf("%w: file row %q but no directory to read files from", ErrInvalid, value))
			}
			if raw, err = fs.ReadFile(fsys, value); err != nil {
				return fail(fmt.Errorf("%w: %w", ErrInvalid, err))
			}
		}
		e, err := parseValue(enc, raw)
		if err != nil {
			return fail(err)
		}
		e.Namespace, e.Key = ns, key
		out = append(out, e)
	}
}

func csvErr(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return &CSVError{Line: pe.Line, Err: fmt.Errorf("%w: %w", ErrInvalid, pe.Err)}
	}
	return err
}

func parseValue(enc string, raw []byte) (Entry, error) {
	switch enc {
	case "string":
		return Entry{Type: TypeString, Value: string(raw)}, nil
	case "binary":
		return Entry{Type: TypeBlob, Value: raw}, nil
	case "hex2bin":
		b, err := hex.DecodeString(string(bytes.TrimSpace(raw)))
		if err != nil {
			return Entry{}, fmt.Errorf("%w: hex2bin value: %w", ErrInvalid, err)
		}
		return Entry{Type: TypeBlob, Value: b}, nil
	case "base64":
		// Like Python's binascii.a2b_base64, which the generator uses:
		// characters outside the alphabet (line breaks, spaces) are
		// skipped, and so is a '=' that cannot be padding (at the first
		// or second character of a group of four, or not yet completing
		// the group); the '=' that completes a group ends the value.
		// Unlike it, padding is optional.
		clean := make([]byte, 0, len(raw))
		quad, pads := 0, 0
	scan:
		for _, c := range raw {
			switch {
			case c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/':
				clean = append(clean, c)
				quad, pads = (quad+1)%4, 0
			case c == '=' && quad >= 2:
				if pads++; quad+pads >= 4 {
					break scan
				}
			}
		}
		b, err := base64.RawStdEncoding.DecodeString(string(clean))
		if err != nil {
			return Entry{}, fmt.Errorf("%w: base64 value: %w", ErrInvalid, err)
		}
		return Entry{Type: TypeBlob, Value: b}, nil
	}
	t, err := ParseType(enc)
	if err != nil || !t.IsInteger() {
		return Entry{}, fmt.Errorf("%w: unsupported encoding %q", ErrInvalid, enc)
	}
	s := strings.TrimSpace(string(raw))
	base := 10
	if u := strings.TrimLeft(s, "+-"); len(u) > 2 && (u[:2] == "0x" || u[:2] == "0X") {
		s, base = s[:len(s)-len(u)]+u[2:], 16
	}
	bits := [...]int{TypeU8: 8, TypeI8: 8, TypeU16: 16, TypeI16: 16, TypeU32: 32, TypeI32: 32, TypeU64: 64, TypeI64: 64}[t]
	signed := t == TypeI8 || t == TypeI16 || t == TypeI32 || t == TypeI64
	var v any
	if signed {
		n, err := strconv.ParseInt(s, base, bits)
		if err != nil {
			return Entry{}, fmt.Errorf("%w: %s value %q is not an integer in range", ErrInvalid, t, string(raw))
		}
		switch t {
		case TypeI8:
			v = int8(n)
		case TypeI16:
			v = int16(n)
		case TypeI32:
			v = int32(n)
		default:
			v = n
		}
	} else {
		n, err := strconv.ParseUint(strings.TrimPrefix(s, "+"), base, bits)
		if err != nil {
			return Entry{}, fmt.Errorf("%w: %s value %q is not an integer in range", ErrInvalid, t, string(raw))
		}
		switch t {
		case TypeU8:
			v = uint8(n)
		case TypeU16:
			v = uint16(n)
		case TypeU32:
			v = uint32(n)
		default:
			v = n
		}
	}
	return Entry{Type: t, Value: v}, nil
}

// WriteCSV writes entries in the CSV format ReadCSV and ESP-IDF's generator
// read: a namespace row whenever the namespace changes, integers in decimal,
// strings as they are, blobs in base64. A string, key or namespace name the
// generator cannot read back is an error wrapping ErrInvalid: one containing
// a carriage return (it reads files with universal newlines) or a line break
// followed by '#' (it drops every line starting with '#', also inside a
// quoted value). The generator's CSV reader also limits a field to 131072
// characters, so it cannot read back a blob of more than 98304 bytes, which
// ReadCSV can.
func WriteCSV(w io.Writer, entries []Entry) error {
	var b strings.Builder
	b.WriteString("key,type,encoding,value\n")
	ns := ""
	row := func(fields ...string) {
		for i, f := range fields {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(csvField(f))
		}
		b.WriteByte('\n')
	}
	for i, e := range entries {
		if why := csvUnsafe(e.Namespace); why != "" {
			return fmt.Errorf("%w: entry %d: namespace %q contains %s", ErrInvalid, i, e.Namespace, why)
		}
		if e.Type == TypeNamespace || e.Namespace != ns {
			ns = e.Namespace
			row(ns, "namespace", "", "")
			if e.Type == TypeNamespace {
				continue
			}
		}
		if why := csvUnsafe(e.Key); why != "" {
			return fmt.Errorf("%w: entry %d: key %q contains %s", ErrInvalid, i, e.Key, why)
		}
		if !checkValue(e.Type, e.Value) {
			return fmt.Errorf("%w: entry %d: type %s with a Go value of type %T", ErrInvalid, i, e.Type, e.Value)
		}
		switch v := e.Value.(type) {
		case string:
			if why := csvUnsafe(v); why != "" {
				return fmt.Errorf("%w: entry %d: string %q contains %s, which the generator's CSV cannot carry", ErrInvalid, i, e.Key, why)
			}
			row(e.Key, "data", "string", v)
		case []byte:
			row(e.Key, "data", "base64", base64.StdEncoding.EncodeToString(v))
		default:
			row(e.Key, "data", e.Type.String(), fmt.Sprint(v))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// csvUnsafe says why the generator would not read s back from a CSV field,
// or returns "".
func csvUnsafe(s string) string {
	switch {
	case strings.ContainsRune(s, '\r'):
		return "a carriage return"
	case strings.Contains(s, "\n#"):
		return "a line starting with '#'"
	}
	return ""
}

// csvField quotes f when a CSV reader would otherwise change it: separators,
// quotes, line breaks, surrounding blanks, or a leading '#' (a comment).
func csvField(f string) string {
	if f == "" {
		return f
	}
	if strings.ContainsAny(f, ",\"\r\n") || f[0] == '#' || f[0] == ' ' || f[0] == '\t' {
		return `"` + strings.ReplaceAll(f, `"`, `""`) + `"`
	}
	return f
}
