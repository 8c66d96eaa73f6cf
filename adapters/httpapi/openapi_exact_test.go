package httpapi

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// The patterns the document declares accept exactly what the server
// accepts: the property-based run finds disagreements by sampling, these
// check them exhaustively where the space is small.

func TestCursorPatternIsExact(t *testing.T) {
	re := regexp.MustCompile(cursorPattern)
	for _, id := range []int64{0, 1, 2, 41, 1 << 20, 1<<62 + 12345, 1<<63 - 1} {
		c := encodeCursor(id)
		if !re.MatchString(c) {
			t.Errorf("encodeCursor(%d) = %q does not match the declared pattern", id, c)
		}
		got, err := decodeCursor(c)
		if err != nil || got != id {
			t.Errorf("decodeCursor(encodeCursor(%d)) = %d, %v", id, got, err)
		}
	}
	for _, c := range []string{"", "c1.", "c1.0", "c1.8000000000000000", "c1.0123456789ABCDEF", "c1.0123456789abcde", "c2.0123456789abcdef", "c1.0123456789abcdef0"} {
		_, err := decodeCursor(c)
		if (err == nil) != re.MatchString(c) {
			t.Errorf("cursor %q: decode error %v, pattern match %t", c, err, re.MatchString(c))
		}
	}
	// Every pattern match decodes to a non-negative id.
	for top := '0'; top <= '7'; top++ {
		c := fmt.Sprintf("c1.%cfffffffffffffff", top)
		if id, err := decodeCursor(c); err != nil || id < 0 {
			t.Errorf("decodeCursor(%q) = %d, %v", c, id, err)
		}
	}
}

func TestSizePatternIsExact(t *testing.T) {
	hex := regexp.MustCompile(nvsSizeSchema["anyOf"].([]obj)[1]["pattern"].(string))
	dec := nvsSizeSchema["anyOf"].([]obj)[0]
	lo, hi, step := dec["minimum"].(int), dec["maximum"].(int), dec["multipleOf"].(int)
	for v := 0; v <= 0x200000; v += 0x100 {
		for w := 1; w <= 8; w++ {
			for _, form := range []string{"0x%0*x", "0X%0*X"} {
				s := fmt.Sprintf(form, w, v)
				if len(s) > 10 {
					continue
				}
				_, err := nvsSize(s)
				if (err == nil) != hex.MatchString(s) {
					t.Fatalf("size %q: server error %v, declared pattern match %t", s, err, hex.MatchString(s))
				}
			}
		}
		s := fmt.Sprint(v)
		_, err := nvsSize(s)
		if want := v >= lo && v <= hi && v%step == 0; (err == nil) != want {
			t.Fatalf("size %s: server error %v, declared integer range says %t", s, err, want)
		}
	}
	for _, s := range []string{"+12288", " 12288", "0x+3000", "0x-3000", "1e4", "0x", "0x1_000", "12288.5", "1.2288e4 "} {
		if _, err := nvsSize(s); err == nil {
			t.Errorf("size %q accepted", s)
		}
	}
	// JSON Schema's integer is a value: these spell 12288.
	for _, s := range []string{"12288.0", "1.2288e4", "12288e0"} {
		if n, err := nvsSize(s); err != nil || n != 12288 {
			t.Errorf("size %q = %d, %v; want 12288", s, n, err)
		}
	}
}

func TestCaselessPattern(t *testing.T) {
	re := regexp.MustCompile(caseless("OK", "PENDING"))
	for s, want := range map[string]bool{"OK": true, "ok": true, "Ok": true, "pEnDiNg": true, "OKK": false, "": false, "QUEUED": false} {
		if re.MatchString(s) != want {
			t.Errorf("caseless match %q = %t, want %t", s, !want, want)
		}
	}
}

// TestNamePatternIsExact: the declared name pattern refuses exactly what
// the server's blank check (strings.TrimSpace, that is unicode.IsSpace)
// finds blank, for every code point, and U+0000, which the database
// cannot store.
func TestNamePatternIsExact(t *testing.T) {
	var class []rune // the code points of spaceClass
	parts := regexp.MustCompile(`\\u([0-9a-f]{4})(?:-\\u([0-9a-f]{4}))?`).FindAllStringSubmatch(spaceClass, -1)
	for _, m := range parts {
		lo, _ := strconv.ParseUint(m[1], 16, 32)
		hi := lo
		if m[2] != "" {
			hi, _ = strconv.ParseUint(m[2], 16, 32)
		}
		for r := lo; r <= hi; r++ {
			class = append(class, rune(r))
		}
	}
	if got := regexp.MustCompile(`\\u[0-9a-f]{4}(-\\u[0-9a-f]{4})?`).ReplaceAllString(spaceClass, ""); got != "" {
		t.Fatalf("spaceClass holds more than \\uXXXX code points and ranges: %q", got)
	}
	in := map[rune]bool{}
	for _, r := range class {
		in[r] = true
	}
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if unicode.IsSpace(r) != in[r] {
			t.Errorf("U+%04X: unicode.IsSpace %t, in the declared class %t", r, unicode.IsSpace(r), in[r])
		}
	}
	// The pattern in Go's syntax: \x{...} for \u.
	goPattern := regexp.MustCompile(`\\u([0-9a-f]{4})`).ReplaceAllString(namePattern, `\x{$1}`)
	re := regexp.MustCompile(goPattern)
	for _, s := range []string{"a", " a ", "Soil sensor", "\u3000x", "\u00a0", " ", "\t\n", "", "\u2028\u2029", "x\x00", "\x00", "\ufeff"} {
		blank := strings.TrimSpace(s) == ""
		if want := !blank && !strings.ContainsRune(s, 0); re.MatchString(s) != want {
			t.Errorf("name %q: pattern matches %t, server accepts %t", s, re.MatchString(s), want)
		}
	}
}
