package mdm

import (
	"encoding/json"
	"testing"
)

// Patterns of config schemas are ECMA-262 that RE2 can run: what RE2 alone
// reads (a stray "]", "{" or "}", its own escapes and flags) is refused,
// since the API document promises JSON Schema's format regex (ECMA-262).
func TestConfigSchemaPatterns(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		ok      bool
	}{
		{`^[a-z0-9_]{1,50}$`, true}, {`\d+\.\d*`, true}, {`a{2}b{1,}c{0,3}?`, true}, {`[\]\[{}]`, true},
		{`\{\}`, true}, {`(?:ab)|(?<name>x)`, true}, {`\p{L}+`, true}, {`[^]]`, false}, {`.*?`, true},
		{`S]`, false}, {`a{`, false}, {`a}`, false}, {`{1}`, false}, {`x{1,2`, false}, {`[]]`, false},
		{`\z`, false}, {`\Aab`, false}, {`\Qa.b\E`, false}, {`\pL`, false}, {`\x{41}`, false},
		{`(?i)abc`, false}, {`(?P<n>a)`, false}, {`[[:alpha:]]`, false}, {`(`, false}, {`a**`, false},
		{`(?=a)`, false}, // look-ahead: ECMA-262, but RE2 cannot run it
	} {
		schema, _ := json.Marshal(map[string]any{"pattern": tc.pattern})
		_, err := compileSchema(schema)
		if (err == nil) != tc.ok {
			t.Errorf("pattern %q: accepted %t, want %t (%v)", tc.pattern, err == nil, tc.ok, err)
		}
		props, _ := json.Marshal(map[string]any{"patternProperties": map[string]any{tc.pattern: true}})
		if _, err := compileSchema(props); (err == nil) != tc.ok {
			t.Errorf("patternProperties %q: accepted %t, want %t (%v)", tc.pattern, err == nil, tc.ok, err)
		}
	}
}
