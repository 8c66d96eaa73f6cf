package mdm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/espmdm/espmdm/core/model"
)

// schemaURL is the name a model's schema is compiled under. It is not
// fetchable: references to anything but the schema itself and the standard
// meta-schemas are refused.
const schemaURL = "urn:espmdm:config-schema"

// noLoader refuses to load any external schema: a config schema must be
// self-contained (no remote or file $ref).
type noLoader struct{}

func (noLoader) Load(url string) (any, error) {
	return nil, errors.New("external references are not allowed")
}

// isNull reports whether raw is empty or JSON null.
func isNull(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) == 0 || string(t) == "null"
}

// compileSchema parses and compiles a JSON Schema. Errors are validation
// errors on field "config_schema".
func compileSchema(raw json.RawMessage) (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, model.Invalid("config_schema", "not valid JSON: %s", jsonProblem(err))
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(noLoader{})
	c.UseRegexpEngine(compilePattern)
	c.AssertFormat()
	if err := c.AddResource(schemaURL, doc); err != nil {
		return nil, model.Invalid("config_schema", "%s", oneLine(err.Error()))
	}
	sch, err := c.Compile(schemaURL)
	if err != nil {
		return nil, model.Invalid("config_schema", "not a valid JSON Schema: %s", schemaCompileProblem(err))
	}
	return sch, nil
}

// schemaCompileProblem says what is wrong with a schema in the user's
// terms: where in the schema each problem is (a JSON pointer into it) and
// what it is, without the library's internal URLs and wording.
func schemaCompileProblem(err error) string {
	var le *jsonschema.LoadURLError
	if errors.As(err, &le) {
		return "it refers to another document (" + le.URL + "): only references within the schema are allowed"
	}
	var sve *jsonschema.SchemaValidationError
	if errors.As(err, &sve) {
		err = sve.Err // no Unwrap: the metaschema's verdict is in Err
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return oneLine(err.Error())
	}
	var parts []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) > 0 {
			for _, c := range e.Causes {
				walk(c)
			}
			return
		}
		out := e.BasicOutput()
		if out.Error == nil {
			return
		}
		part := fmt.Sprintf("at '/%s': %s", strings.Join(e.InstanceLocation, "/"), out.Error.String())
		if !slices.Contains(parts, part) {
			parts = append(parts, part)
		}
	}
	walk(ve)
	if len(parts) == 0 {
		return "it does not follow JSON Schema 2020-12"
	}
	return strings.Join(parts, "; ")
}

// normalizeSchema checks an optional schema and returns it compacted, or
// nil when raw is empty or JSON null.
func normalizeSchema(raw json.RawMessage) (json.RawMessage, error) {
	if isNull(raw) {
		return nil, nil
	}
	if _, err := compileSchema(raw); err != nil {
		return nil, err
	}
	if holdsNUL(raw) {
		return nil, model.Invalid("config_schema", "%s", nulProblem)
	}
	return compact(raw), nil
}

// nulProblem says why a JSON value with U+0000 is refused.
const nulProblem = "must not contain U+0000 in a string or member name (the database cannot store it)"

// holdsNUL reports whether a valid JSON value has U+0000 in a string or a
// member name. PostgreSQL's jsonb cannot store it (and the database
// driver would otherwise rewrite it, silently changing the value).
func holdsNUL(raw json.RawMessage) bool {
	if !bytes.Contains(raw, []byte(`\u0000`)) {
		return false // the only way JSON text carries U+0000
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if s, ok := tok.(string); ok && strings.ContainsRune(s, 0) {
			return true
		}
	}
}

// normalizeConfig checks that raw is one JSON object and returns it
// compacted.
func normalizeConfig(raw json.RawMessage) (json.RawMessage, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return nil, model.Invalid("config", "required: a JSON object")
	}
	if !json.Valid(t) {
		var v any
		return nil, model.Invalid("config", "not valid JSON: %s", jsonProblem(json.Unmarshal(t, &v)))
	}
	if t[0] != '{' {
		return nil, model.Invalid("config", "must be a JSON object, not %s", jsonKind(t[0]))
	}
	if holdsNUL(t) {
		return nil, model.Invalid("config", "%s", nulProblem)
	}
	return compact(t), nil
}

// validateConfig checks config (already normalized) against the model's
// schema, if it has one. A config the schema refuses is a conflict with
// the model's state (its schema), on field "config": the request itself is
// well formed.
func validateConfig(m model.DeviceModel, config json.RawMessage) error {
	if isNull(m.ConfigSchema) {
		return nil
	}
	sch, err := compileSchema(m.ConfigSchema)
	if err != nil {
		// The stored schema was valid when it was set; a library upgrade
		// could still reject it. Say so rather than accept any config.
		return fmt.Errorf("device model %s has a schema that no longer compiles: %w", m.Code, err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(config))
	if err != nil {
		return model.Invalid("config", "not valid JSON: %s", jsonProblem(err))
	}
	if err := sch.Validate(inst); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			return model.ConflictOn("config", "does not match the model's config_schema: %s", schemaProblems(ve))
		}
		return model.ConflictOn("config", "does not match the model's config_schema")
	}
	return nil
}

// schemaProblems renders the leaf errors of a schema validation as
// "at '/path': reason" clauses joined by "; ", without the config values
// that some messages would quote.
func schemaProblems(ve *jsonschema.ValidationError) string {
	out := ve.BasicOutput()
	var parts []string
	for _, e := range out.Errors {
		if e.Error == nil {
			continue
		}
		msg := e.Error.String()
		if strings.HasPrefix(msg, "validation failed") && len(out.Errors) > 1 {
			continue // a summary of the clauses below it
		}
		// These two messages quote the offending value, which may be a
		// secret (a password that misses a pattern): leave it out.
		switch {
		case strings.HasSuffix(e.KeywordLocation, "/pattern"):
			msg = "does not match the pattern the schema requires"
		case strings.HasSuffix(e.KeywordLocation, "/format"):
			msg = "is not in the format the schema requires"
		}
		loc := e.InstanceLocation
		if loc == "" {
			loc = "/"
		}
		parts = append(parts, fmt.Sprintf("at '%s': %s", loc, msg))
	}
	if len(parts) == 0 {
		return oneLine(ve.Error())
	}
	return strings.Join(parts, "; ")
}

func compact(raw []byte) json.RawMessage {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return bytes.Clone(raw)
	}
	return b.Bytes()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// jsonProblem describes a JSON syntax error without echoing the input.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	}
	return "malformed or truncated JSON"
}

func jsonKind(first byte) string {
	switch first {
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	default:
		return "a number"
	}
}

// jsonEqual reports whether a and b hold the same JSON value, ignoring
// formatting and key order.
func jsonEqual(a, b json.RawMessage) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}
