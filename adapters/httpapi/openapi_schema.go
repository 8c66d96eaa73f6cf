package httpapi

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// The document's components/schemas for the wire types are derived from
// the DTO types themselves, so that a member added to a DTO is in the
// document without anyone remembering it. Reflection gives the names
// (encoding/json's), the JSON types, nesting, nullability and what is
// required; struct tags add what reflection cannot know:
//
//	oas:"..."      comma-separated: required (a request member that must be
//	               there), - (not documented), use=<fragment> (a named
//	               schema from schemaFragments), ref=<component>, type=a|b,
//	               format=, minimum=, maximum=, minLength=, maxLength=,
//	               enum=a|b, examples=a|b, const=, default=<JSON>
//	pattern:"..."  the pattern (kept apart: patterns hold commas)
//	desc:"..."     the description
//
// Response DTOs (output) require every member that is not omitempty; a
// pointer that is not omitempty is nullable. Request DTOs (input) use
// pointers and json.RawMessage to tell an absent member from null, so a
// pointer means "may be absent", not "may be null"; they require the
// members tagged required and refuse any other member, as decodeJSON does.

// dtoSchema is one DTO type named as a component.
type dtoSchema struct {
	name  string
	typ   reflect.Type
	input bool
}

func output[T any](name string) dtoSchema { return dtoSchema{name, reflect.TypeFor[T](), false} }
func input[T any](name string) dtoSchema  { return dtoSchema{name, reflect.TypeFor[T](), true} }

var rawMessageType = reflect.TypeFor[json.RawMessage]()

// builtSchema is the schema built for one struct type.
type builtSchema struct {
	typ    reflect.Type
	schema obj
	input  bool
}

// schemaBuilder derives schemas from the types in components; a struct
// type that is not a component is inlined where it is used.
type schemaBuilder struct {
	names     map[reflect.Type]string
	fragments map[string]obj
	built     *[]builtSchema // every struct type's schema, for the tests
}

// dtoSchemas builds the component schema of every DTO, and lists the
// schema of every struct type, inlined ones too. A tag it cannot read is
// a programming error, found by any test that builds the document.
func dtoSchemas(components []dtoSchema, fragments map[string]obj) (obj, []builtSchema) {
	var built []builtSchema
	b := schemaBuilder{names: map[reflect.Type]string{}, fragments: fragments, built: &built}
	for _, c := range components {
		b.names[c.typ] = c.name
	}
	out := obj{}
	for _, c := range components {
		out[c.name] = b.object(c.typ, c.input)
	}
	return out, built
}

// object is the schema of struct type t; an embedded component becomes an
// allOf member.
func (b schemaBuilder) object(t reflect.Type, input bool) obj {
	var embedded []obj
	props := obj{}
	var required []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, omitempty := jsonName(f)
		if name == "-" || f.Tag.Get("oas") == "-" {
			continue
		}
		if f.Anonymous && f.Tag.Get("json") == "" {
			comp, ok := b.names[f.Type]
			if !ok {
				panic(fmt.Sprintf("openapi: %s embeds %s, which is not a component", t, f.Type))
			}
			embedded = append(embedded, ref(comp))
			continue
		}
		if !f.IsExported() {
			continue
		}
		s, req := b.member(t, f, input, omitempty)
		props[name] = s
		if req {
			required = append(required, name)
		}
	}
	s := obj{"type": "object", "properties": props}
	if len(required) > 0 {
		s["required"] = required
	}
	if input {
		s["additionalProperties"] = false
	}
	if len(embedded) > 0 {
		s = obj{"allOf": append(embedded, s)}
	}
	*b.built = append(*b.built, builtSchema{t, s, input})
	return s
}

// member is the schema of field f of t, and whether it is required.
func (b schemaBuilder) member(t reflect.Type, f reflect.StructField, input, omitempty bool) (obj, bool) {
	where := t.Name() + "." + f.Name
	var s obj
	required := !input && !omitempty
	tag := f.Tag.Get("oas")
	typ := f.Type
	isPtr := typ.Kind() == reflect.Pointer
	if isPtr {
		typ = typ.Elem()
	}
	if typ != rawMessageType {
		s = b.schemaOf(typ, input)
	} else {
		s = obj{} // raw JSON: the tags say what it is
	}
	for _, item := range strings.Split(tag, ",") {
		key, val, _ := strings.Cut(item, "=")
		switch key {
		case "":
		case "required":
			if !input {
				panic("openapi: " + where + ": required is for request members (responses require what is not omitempty)")
			}
			required = true
		case "use":
			frag, ok := b.fragments[val]
			if !ok {
				panic("openapi: " + where + ": no schema fragment " + val)
			}
			for k, v := range frag {
				s[k] = v
			}
		case "ref":
			s = ref(val)
		case "type":
			if types := strings.Split(val, "|"); len(types) > 1 {
				s["type"] = types
			} else {
				s["type"] = val
			}
		case "format", "const", "contentEncoding":
			s[key] = val
		case "enum", "examples":
			s[key] = strings.Split(val, "|")
		case "minimum", "maximum", "minLength", "maxLength":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil {
				panic("openapi: " + where + ": " + key + " is not an integer: " + val)
			}
			s[key] = n
		case "default":
			var v any
			if err := json.Unmarshal([]byte(val), &v); err != nil {
				panic("openapi: " + where + ": default is not JSON: " + val)
			}
			s[key] = v
		default:
			panic("openapi: " + where + ": unknown oas tag " + key)
		}
	}
	if p, ok := f.Tag.Lookup("pattern"); ok {
		s["pattern"] = p
	}
	if d, ok := f.Tag.Lookup("desc"); ok {
		s["description"] = d
	}
	if _, ok := s["type"]; !ok && s["$ref"] == nil {
		panic("openapi: " + where + ": raw JSON needs type=, use= or ref=")
	}
	if isPtr && !input && !omitempty {
		one, ok := s["type"].(string)
		if !ok {
			panic("openapi: " + where + ": a nullable member needs one type")
		}
		s["type"] = []string{one, "null"}
	}
	return s, required
}

// schemaOf is the schema of a Go type as encoding/json writes it.
func (b schemaBuilder) schemaOf(t reflect.Type, input bool) obj {
	if name, ok := b.names[t]; ok {
		return ref(name)
	}
	switch t.Kind() {
	case reflect.String:
		return obj{"type": "string"}
	case reflect.Bool:
		return obj{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32:
		return obj{"type": "integer"}
	case reflect.Int64:
		return obj{"type": "integer", "format": "int64"}
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		return obj{"type": "integer", "minimum": 0, "maximum": uint64(1)<<t.Bits() - 1}
	case reflect.Uint, reflect.Uint64:
		return obj{"type": "integer", "minimum": 0, "maximum": uint64(math.MaxUint64)}
	case reflect.Float32, reflect.Float64:
		return obj{"type": "number"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return obj{"type": "string", "contentEncoding": "base64"}
		}
		return obj{"type": "array", "items": b.schemaOf(t.Elem(), input)}
	case reflect.Struct:
		return b.object(t, input)
	}
	panic(fmt.Sprintf("openapi: no schema for %s", t))
}

// jsonName is the member name encoding/json gives f, and its omitempty.
func jsonName(f reflect.StructField) (string, bool) {
	name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		name = f.Name
	}
	return name, strings.Contains(","+opts+",", ",omitempty,")
}
