package httpapi

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

// TestSchemasFollowEncodingJSON keeps the document and the DTOs in step:
// for every struct type the document describes, the members encoding/json
// writes for a value with every field set are exactly the declared
// properties (no more: a field the document misses; no fewer: a member no
// field writes), and for a response the members it writes for the zero
// value (every one that is not omitempty) are exactly the required ones.
func TestSchemasFollowEncodingJSON(t *testing.T) {
	components, built := dtoSchemas(wireTypes, schemaFragments())
	if len(built) < len(wireTypes) {
		t.Fatalf("%d schemas built for %d wire types", len(built), len(wireTypes))
	}
	for _, b := range built {
		props, required := members(t, components, b.schema)
		full := reflect.New(b.typ).Elem()
		fill(full)
		if got, want := jsonMembers(t, full), withoutUndocumented(b.typ, props); !slices.Equal(got, want) {
			t.Errorf("%s: encoding/json writes %v; the document declares %v", b.typ, got, want)
		}
		if b.input {
			// A request body with every member decodes as the handler
			// decodes it (unknown members refused).
			body, _ := json.Marshal(full.Interface())
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(reflect.New(b.typ).Interface()); err != nil {
				t.Errorf("%s: %s does not decode: %v", b.typ, body, err)
			}
			continue
		}
		if got := jsonMembers(t, reflect.New(b.typ).Elem()); !slices.Equal(got, required) {
			t.Errorf("%s: encoding/json always writes %v; the document requires %v", b.typ, got, required)
		}
	}
}

// TestUndocumentedMembersAreFew: oas:"-" leaves a member out of the
// document; each one is a decision, listed here.
func TestUndocumentedMembersAreFew(t *testing.T) {
	var got []string
	for _, c := range wireTypes {
		for i := range c.typ.NumField() {
			if f := c.typ.Field(i); f.Tag.Get("oas") == "-" {
				got = append(got, c.name+"."+f.Name)
			}
		}
	}
	want := []string{"DeviceModelUpdate.Code"} // read only to refuse it with a reason
	if !slices.Equal(got, want) {
		t.Errorf("members left out of the document: %v, want %v", got, want)
	}
}

// TestEveryDTOIsDocumented: each struct type of the package named *DTO
// (and Problem) is a component or inlined in one, so a new wire type
// cannot be served without a schema.
func TestEveryDTOIsDocumented(t *testing.T) {
	_, built := dtoSchemas(wireTypes, schemaFragments())
	documented := map[string]bool{}
	for _, b := range built {
		documented[b.typ.Name()] = true
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var dtos []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok {
				return true
			}
			if _, isStruct := ts.Type.(*ast.StructType); isStruct && (strings.HasSuffix(ts.Name.Name, "DTO") || ts.Name.Name == "Problem") {
				dtos = append(dtos, ts.Name.Name)
			}
			return true
		})
	}
	if len(dtos) < len(wireTypes) {
		t.Fatalf("found %d DTO types, fewer than the %d components: %v", len(dtos), len(wireTypes), dtos)
	}
	for _, name := range dtos {
		if !documented[name] {
			t.Errorf("%s is a wire type without a schema: add it to wireTypes (or use it in one)", name)
		}
	}
}

func TestSchemaBuilder(t *testing.T) {
	type inner struct {
		N uint32 `json:"n"`
	}
	type base struct {
		ID int64 `json:"id"`
	}
	type out struct {
		base
		Name  string          `json:"name" pattern:"^[a-z]+$" desc:"a name"`
		Opt   *string         `json:"opt"`
		Gone  *int            `json:"gone,omitempty" oas:"minimum=1"`
		When  string          `json:"when" oas:"use=dateTime"`
		Raw   json.RawMessage `json:"raw" oas:"type=object|null"`
		Blob  []byte          `json:"blob"`
		Inner []inner         `json:"inner"`
		Kind  string          `json:"kind" oas:"enum=a|b|"`
		Skip  string          `json:"-"`
		_     string
	}
	type in struct {
		Must *string         `json:"must" oas:"required"`
		May  json.RawMessage `json:"may" oas:"type=boolean,default=true"`
		Ref  json.RawMessage `json:"ref" oas:"ref=Config"`
	}
	got, _ := dtoSchemas([]dtoSchema{output[base]("Base"), output[out]("Out"), input[in]("In")}, schemaFragments())
	want := map[string]any{
		"Base": map[string]any{"type": "object", "required": []any{"id"},
			"properties": map[string]any{"id": map[string]any{"type": "integer", "format": "int64"}}},
		"Out": map[string]any{"allOf": []any{
			map[string]any{"$ref": "#/components/schemas/Base"},
			map[string]any{
				"type":     "object",
				"required": []any{"name", "opt", "when", "raw", "blob", "inner", "kind"},
				"properties": map[string]any{
					"name": map[string]any{"type": "string", "pattern": "^[a-z]+$", "description": "a name"},
					"opt":  map[string]any{"type": []any{"string", "null"}},
					"gone": map[string]any{"type": "integer", "minimum": 1.0},
					"when": map[string]any{"type": "string", "format": "date-time", "description": "RFC 3339, UTC"},
					"raw":  map[string]any{"type": []any{"object", "null"}},
					"blob": map[string]any{"type": "string", "contentEncoding": "base64"},
					"inner": map[string]any{"type": "array", "items": map[string]any{
						"type": "object", "required": []any{"n"},
						"properties": map[string]any{"n": map[string]any{"type": "integer", "minimum": 0.0, "maximum": 4294967295.0}},
					}},
					"kind": map[string]any{"type": "string", "enum": []any{"a", "b", ""}},
				},
			},
		}},
		"In": map[string]any{
			"type": "object", "required": []any{"must"}, "additionalProperties": false,
			"properties": map[string]any{
				"must": map[string]any{"type": "string"},
				"may":  map[string]any{"type": "boolean", "default": true},
				"ref":  map[string]any{"$ref": "#/components/schemas/Config"},
			},
		},
	}
	if g, w := asJSON(t, got), asJSON(t, want); !reflect.DeepEqual(g, w) {
		gb, _ := json.MarshalIndent(g, "", "  ")
		t.Errorf("schemas:\n%s", gb)
	}
}

func TestSchemaBuilderRefusesWhatItCannotRead(t *testing.T) {
	type other struct{ A int }
	type embedsOther struct{ other }
	cases := map[string]dtoSchema{
		"unknown tag": output[struct {
			A int `json:"a" oas:"minimun=1"`
		}]("X"),
		"unknown fragment": output[struct {
			A string `json:"a" oas:"use=nope"`
		}]("X"),
		"raw without a type": output[struct {
			A json.RawMessage `json:"a"`
		}]("X"),
		"required on a response": output[struct {
			A string `json:"a" oas:"required"`
		}]("X"),
		"not an integer": output[struct {
			A int `json:"a" oas:"maximum=ten"`
		}]("X"),
		"embedded non-component": output[embedsOther]("X"),
		"no JSON type":           output[struct{ C chan int }]("X"),
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("no panic")
				}
			}()
			dtoSchemas([]dtoSchema{c}, schemaFragments())
		})
	}
}

// members lists the properties of an object schema (following allOf and
// its $refs) and its required members, both sorted.
func members(t *testing.T, components, s obj) (props, required []string) {
	t.Helper()
	if r, ok := s["$ref"].(string); ok {
		return members(t, components, components[strings.TrimPrefix(r, "#/components/schemas/")].(obj))
	}
	if all, ok := s["allOf"].([]obj); ok {
		for _, part := range all {
			p, r := members(t, components, part)
			props, required = append(props, p...), append(required, r...)
		}
		sort.Strings(props)
		sort.Strings(required)
		return props, required
	}
	for name := range s["properties"].(obj) {
		props = append(props, name)
	}
	if r, ok := s["required"].([]string); ok {
		required = append(required, r...)
	}
	sort.Strings(props)
	sort.Strings(required)
	return props, required
}

// withoutUndocumented adds to props the members of t tagged oas:"-", which
// encoding/json writes but the document leaves out.
func withoutUndocumented(t reflect.Type, props []string) []string {
	out := slices.Clone(props)
	for i := range t.NumField() {
		if f := t.Field(i); f.Tag.Get("oas") == "-" {
			name, _ := jsonName(f)
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// jsonMembers lists the members encoding/json writes for v, sorted.
func jsonMembers(t *testing.T, v reflect.Value) []string {
	t.Helper()
	b, err := json.Marshal(v.Interface())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	out := []string{}
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// fill sets every settable field under v to a value that is not zero.
func fill(v reflect.Value) {
	switch {
	case v.Type() == rawMessageType:
		v.SetBytes([]byte("1"))
	case !v.CanSet() && v.Kind() != reflect.Struct:
	case v.Kind() == reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem())
	case v.Kind() == reflect.Struct:
		for i := range v.NumField() {
			fill(v.Field(i))
		}
	case v.Kind() == reflect.String:
		v.SetString("x")
	case v.Kind() == reflect.Bool:
		v.SetBool(true)
	case v.CanInt():
		v.SetInt(1)
	case v.CanUint():
		v.SetUint(1)
	case v.CanFloat():
		v.SetFloat(1.5)
	case v.Kind() == reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0))
	}
}

// asJSON is v as encoding/json reads it back.
func asJSON(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
