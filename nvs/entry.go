package nvs

import (
	"errors"
	"fmt"
	"strings"
)

// Type is the kind of an Entry: a namespace declaration, one of the eight
// integer types, a string or a blob. Its String form is the name ESP-IDF's
// CSV format uses ("u8" ... "i64", "string", "blob", "namespace").
type Type uint8

// The entry types. TypeNamespace declares a namespace (Entry.Key and
// Entry.Value are unused); every other type is a key/value item.
const (
	TypeNamespace Type = iota + 1
	TypeU8
	TypeI8
	TypeU16
	TypeI16
	TypeU32
	TypeI32
	TypeU64
	TypeI64
	TypeString
	TypeBlob
)

var typeNames = [...]string{
	TypeNamespace: "namespace",
	TypeU8:        "u8",
	TypeI8:        "i8",
	TypeU16:       "u16",
	TypeI16:       "i16",
	TypeU32:       "u32",
	TypeI32:       "i32",
	TypeU64:       "u64",
	TypeI64:       "i64",
	TypeString:    "string",
	TypeBlob:      "blob",
}

// String returns the lower-case name of t, or "Type(n)" for an unknown value.
func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// ParseType returns the Type named s ("u8" ... "i64", "string", "blob",
// "namespace"), ignoring case.
func ParseType(s string) (Type, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for t, name := range typeNames {
		if name != "" && name == s {
			return Type(t), nil
		}
	}
	return 0, fmt.Errorf("%w: unknown type %q", ErrInvalid, s)
}

// IsInteger reports whether t is one of the eight integer types.
func (t Type) IsInteger() bool { return t >= TypeU8 && t <= TypeI64 }

// Entry is one item of an NVS partition, or a namespace declaration.
//
// Value holds the Go type matching Type exactly: uint8, int8, uint16, int16,
// uint32, int32, uint64, int64, string (without the terminating NUL that NVS
// stores) or []byte. It is nil for TypeNamespace.
//
// Namespace declarations are optional when encoding: an item's namespace is
// declared implicitly before its first item. Decode and ReadCSV return them
// so that namespaces without items, which a device can open, survive.
type Entry struct {
	Namespace string
	Key       string
	Type      Type
	Value     any
}

// String returns a one-line description such as `prov/device_key string "x"`.
func (e Entry) String() string {
	if e.Type == TypeNamespace {
		return fmt.Sprintf("namespace %s", e.Namespace)
	}
	switch v := e.Value.(type) {
	case string:
		return fmt.Sprintf("%s/%s %s %q", e.Namespace, e.Key, e.Type, v)
	case []byte:
		return fmt.Sprintf("%s/%s %s %x", e.Namespace, e.Key, e.Type, v)
	default:
		return fmt.Sprintf("%s/%s %s %v", e.Namespace, e.Key, e.Type, v)
	}
}

// KV is a key and a string value, for Strings.
type KV struct {
	Key, Value string
}

// Strings returns one string entry per pair, in order, all in namespace ns,
// preceded by the declaration of ns. It is the shape of a provisioning
// partition:
//
//	nvs.Encode(nvs.Strings("prov", nvs.KV{"device_key", k}, ...), nvs.Options{Size: 0x6000})
func Strings(ns string, pairs ...KV) []Entry {
	out := make([]Entry, 0, len(pairs)+1)
	out = append(out, NamespaceEntry(ns))
	for _, p := range pairs {
		out = append(out, Entry{Namespace: ns, Key: p.Key, Type: TypeString, Value: p.Value})
	}
	return out
}

// NamespaceEntry returns the declaration of namespace ns.
func NamespaceEntry(ns string) Entry { return Entry{Namespace: ns, Type: TypeNamespace} }

// ErrInvalid is wrapped by the errors Encode, ReadCSV and WriteCSV return for
// input that cannot be represented: bad keys, values of the wrong Go type,
// out-of-range numbers, oversized strings, malformed CSV.
var ErrInvalid = errors.New("nvs: invalid input")

// ErrNoSpace is wrapped by the error Encode returns when the entries do not
// fit in the requested partition size.
var ErrNoSpace = errors.New("nvs: partition too small")

// ErrFormat is wrapped by every *FormatError: the bytes are not a valid NVS
// partition.
var ErrFormat = errors.New("nvs: invalid partition")

// FormatError reports a defect in an NVS image at byte offset Off.
type FormatError struct {
	Off int64
	Msg string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("nvs: invalid partition at offset %#x: %s", e.Off, e.Msg)
}

// Unwrap returns ErrFormat.
func (e *FormatError) Unwrap() error { return ErrFormat }

func formatErr(off int, format string, args ...any) error {
	return &FormatError{Off: int64(off), Msg: fmt.Sprintf(format, args...)}
}

// checkValue reports whether v has the Go type that t requires.
func checkValue(t Type, v any) bool {
	switch t {
	case TypeU8:
		_, ok := v.(uint8)
		return ok
	case TypeI8:
		_, ok := v.(int8)
		return ok
	case TypeU16:
		_, ok := v.(uint16)
		return ok
	case TypeI16:
		_, ok := v.(int16)
		return ok
	case TypeU32:
		_, ok := v.(uint32)
		return ok
	case TypeI32:
		_, ok := v.(int32)
		return ok
	case TypeU64:
		_, ok := v.(uint64)
		return ok
	case TypeI64:
		_, ok := v.(int64)
		return ok
	case TypeString:
		_, ok := v.(string)
		return ok
	case TypeBlob:
		_, ok := v.([]byte)
		return ok
	}
	return false
}
