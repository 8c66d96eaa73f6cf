package mdm

import (
	"errors"
	"regexp"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// compilePattern is the regular-expression engine of config schemas: a
// pattern must be valid ECMA-262 (JSON Schema's dialect, what the API
// document's format regex promises) and one Go's RE2 engine runs. RE2
// alone accepts more: a "]", "{" or "}" that is no part of a class or a
// quantifier, and its own escapes and flags (\z, \A, \Q…\E, \pL, \x{41},
// (?i)), none of which ECMA-262 (with the u flag, as JSON Schema
// validators read patterns) allows; those are refused here.
func compilePattern(p string) (jsonschema.Regexp, error) {
	if err := ecmaOnlyProblem(p); err != nil {
		return nil, err
	}
	return regexp.Compile(p)
}

// ecmaOnlyProblem reports the first construct of p that RE2 reads but
// ECMA-262 refuses. It does not judge the rest: RE2 does.
func ecmaOnlyProblem(p string) error {
	rs := []rune(p)
	for i := 0; i < len(rs); i++ {
		switch rs[i] {
		case '\\':
			if i+1 >= len(rs) {
				return nil // RE2 refuses the trailing backslash
			}
			i++
			switch c := rs[i]; {
			case strings.ContainsRune("zAQECZ", c):
				return errors.New(`\` + string(c) + ` is not an ECMA-262 escape`)
			case (c == 'p' || c == 'P') && (i+1 >= len(rs) || rs[i+1] != '{'):
				return errors.New(`\` + string(c) + ` needs braces in ECMA-262: \` + string(c) + `{...}`)
			case c == 'p' || c == 'P':
				for i < len(rs) && rs[i] != '}' {
					i++ // the property name, up to its "}"
				}
			case c == 'x' && i+1 < len(rs) && rs[i+1] == '{':
				return errors.New(`\x{...} is not ECMA-262: write \xHH or \u{...}`)
			}
		case '[':
			// A class ends at the first unescaped "]" (ECMA-262: "[]" is
			// the empty class, not the start of a class holding "]").
			i++
			if i < len(rs) && rs[i] == '^' {
				i++
			}
			for ; i < len(rs) && rs[i] != ']'; i++ {
				if rs[i] == '\\' {
					i++
				} else if rs[i] == '[' && i+1 < len(rs) && rs[i+1] == ':' {
					return errors.New("POSIX classes ([:alpha:]) are not ECMA-262")
				}
			}
		case ']':
			return errors.New(`"]" outside a class must be escaped in ECMA-262`)
		case '{':
			n := quantifierLen(rs[i:])
			if n == 0 {
				return errors.New(`"{" that starts no quantifier must be escaped in ECMA-262`)
			}
			i += n - 1
		case '}':
			return errors.New(`"}" outside a quantifier must be escaped in ECMA-262`)
		case '(':
			if i+1 < len(rs) && rs[i+1] == '?' {
				if i+2 >= len(rs) || !strings.ContainsRune(":=!<", rs[i+2]) {
					return errors.New("(? must be followed by :, =, ! or < in ECMA-262 (no inline flags)")
				}
				if rs[i+2] == '<' && i+3 < len(rs) && rs[i+3] == 'P' {
					return errors.New("(?P<name>) is not ECMA-262: write (?<name>)")
				}
			}
		}
	}
	return nil
}

// quantifierLen is the length of the {n}, {n,} or {n,m} quantifier rs
// starts with; 0 when it starts none.
func quantifierLen(rs []rune) int {
	i, digits := 1, 0
	for ; i < len(rs) && rs[i] >= '0' && rs[i] <= '9'; i++ {
		digits++
	}
	if digits == 0 || i >= len(rs) {
		return 0
	}
	if rs[i] == ',' {
		for i++; i < len(rs) && rs[i] >= '0' && rs[i] <= '9'; i++ {
		}
	}
	if i >= len(rs) || rs[i] != '}' {
		return 0
	}
	return i + 1
}
