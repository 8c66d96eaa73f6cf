package schedule

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// bits is a set of small numbers.
type bits uint64

func (b bits) has(v int) bool { return b&(1<<uint(v)) != 0 }

func span(lo, hi int) bits {
	var b bits
	for v := lo; v <= hi; v++ {
		b |= 1 << uint(v)
	}
	return b
}

// spec is a parsed expression: the matched values of each field.
type spec struct {
	minute, hour, month bits
	dom                 bits // 1..31
	domLast             bool // L: the last day of the month
	dow                 bits // 0..6, Sunday 0
	dowDay              int  // the weekday of nL and n#k
	dowNth              int  // k of n#k, -1 for nL, 0 otherwise
	// either is the either-day rule: both day fields are restricted, so a
	// day matches when either matches; otherwise both must match (and one
	// of them matches every day).
	either bool
	// useDOM and useDOW say which day fields go-quartz sees (one trigger
	// each when both).
	useDOM, useDOW bool
}

// matches reports whether the wall-clock time w (its UTC fields) matches.
func (s *spec) matches(w time.Time) bool {
	if w.Second() != 0 || !s.minute.has(w.Minute()) || !s.hour.has(w.Hour()) || !s.month.has(int(w.Month())) {
		return false
	}
	dom, dow := s.domMatches(w), s.dowMatches(w)
	if s.either {
		return dom || dow
	}
	return dom && dow
}

func (s *spec) domMatches(w time.Time) bool {
	if s.domLast {
		return w.Day() == daysIn(w.Year(), w.Month())
	}
	return s.dom.has(w.Day())
}

func (s *spec) dowMatches(w time.Time) bool {
	wd := int(w.Weekday())
	switch {
	case s.dowNth > 0:
		return wd == s.dowDay && (w.Day()-1)/7+1 == s.dowNth
	case s.dowNth < 0:
		return wd == s.dowDay && w.Day()+7 > daysIn(w.Year(), w.Month())
	}
	return s.dow.has(wd)
}

func daysIn(year int, month time.Month) int {
	return time.Date(year, month+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// quartz renders s as go-quartz expressions: one, or one per day field under
// the either-day rule. Only numbers, ranges, lists, *, ?, L, nL and n#k are
// emitted; steps and names are expanded, and day-of-week is renumbered to
// go-quartz's SUN=1.
func (s *spec) quartz() []string {
	// The hour is never *: go-quartz v0.15.2 counts a * hour up to 59 and
	// lets time.Date carry hour 24 into the next day, whatever its date.
	head := fmt.Sprintf("0 %s %s", render(s.minute, 0, 59, true), render(s.hour, 0, 23, false))
	month := render(s.month, 1, 12, true)
	var doms []string
	switch {
	case s.domLast:
		doms = []string{"L"}
	case s.dom == span(1, 31):
		doms = []string{"*"}
	default:
		// go-quartz v0.15.2 sets day 29-31 in a shorter month and lets
		// time.Date carry it into the next month, past that month's first
		// days: days 29-31 get a trigger of their own, without them (and
		// none for days that fall in none of the months).
		for _, part := range []bits{s.dom & span(1, 28), s.dom & span(29, 31)} {
			if part != 0 && s.fits(part) {
				doms = append(doms, render(part, 1, 31, true))
			}
		}
	}
	var dow string
	switch {
	case s.dowNth > 0:
		dow = fmt.Sprintf("%d#%d", s.dowDay+1, s.dowNth)
	case s.dowNth < 0:
		dow = fmt.Sprintf("%dL", s.dowDay+1)
	default:
		dow = render(s.dow<<1, 1, 7, true)
	}
	var out []string
	if s.useDOM {
		for _, dom := range doms {
			out = append(out, fmt.Sprintf("%s %s %s ?", head, dom, month))
		}
	}
	if s.useDOW {
		out = append(out, fmt.Sprintf("%s ? %s %s", head, month, dow))
	}
	return out
}

// render writes the set b of values in lo..hi as runs: "*" for all of them
// (when star), "a-b" for three or more consecutive values, else single values.
func render(b bits, lo, hi int, star bool) string {
	if star && b == span(lo, hi) {
		return "*"
	}
	var parts []string
	for v := lo; v <= hi; v++ {
		if !b.has(v) {
			continue
		}
		end := v
		for end+1 <= hi && b.has(end+1) {
			end++
		}
		switch {
		case end-v >= 2:
			parts = append(parts, fmt.Sprintf("%d-%d", v, end))
		case end > v:
			parts = append(parts, strconv.Itoa(v), strconv.Itoa(end))
		default:
			parts = append(parts, strconv.Itoa(v))
		}
		v = end
	}
	return strings.Join(parts, ",")
}

// field describes one Unix cron field.
type field struct {
	name     string
	min, max int
	names    []string // names[v] is the name of v ("" for none)
}

var (
	minuteField = field{name: fieldMinute, min: 0, max: 59}
	hourField   = field{name: fieldHour, min: 0, max: 23}
	domField    = field{name: fieldDOM, min: 1, max: 31}
	monthField  = field{name: fieldMonth, min: 1, max: 12,
		names: []string{"", "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"}}
	dowField = field{name: fieldDOW, min: 0, max: 7,
		names: []string{"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"}}
)

// errorf is an error about the field's text tok.
func (f field) errorf(tok, format string, args ...any) error {
	return model.Invalid(f.name, "%q: %s", tok, fmt.Sprintf(format, args...))
}

// errorAt is an error about part of the field's text tok: `"part" reason`,
// after the whole text when part is less.
func (f field) errorAt(tok, part, format string, args ...any) error {
	reason := fmt.Sprintf("%q %s", part, fmt.Sprintf(format, args...))
	if part != tok {
		reason = fmt.Sprintf("%q: %s", tok, reason)
	}
	return model.Invalid(f.name, "%s", reason)
}

func parseSpec(expr string) (spec, error) {
	toks := strings.Fields(expr)
	if len(toks) != 5 {
		hint := ""
		switch {
		case len(toks) == 1 && strings.HasPrefix(toks[0], "@"):
			hint = "; @-shortcuts are not supported"
		case len(toks) == 6 || len(toks) == 7:
			hint = "; seconds and years are not part of Unix cron"
		}
		return spec{}, model.Invalid(fieldExpr, "%q has %d fields, want 5 (minute hour day-of-month month day-of-week)%s", expr, len(toks), hint)
	}
	var (
		s   spec
		err error
	)
	if s.minute, err = minuteField.parseSet(toks[0]); err != nil {
		return spec{}, err
	}
	if s.hour, err = hourField.parseSet(toks[1]); err != nil {
		return spec{}, err
	}
	if err = s.parseDOM(toks[2]); err != nil {
		return spec{}, err
	}
	if s.month, err = monthField.parseSet(toks[3]); err != nil {
		return spec{}, err
	}
	if err = s.parseDOW(toks[4]); err != nil {
		return spec{}, err
	}
	if err = s.chooseDays(toks[2], toks[4]); err != nil {
		return spec{}, err
	}
	if s.useDOM && !s.domLast && !s.fits(s.dom) {
		return spec{}, domField.errorAt(toks[2], toks[2], "never falls in month %q: the schedule would never fire", toks[3])
	}
	return s, nil
}

func (s *spec) parseDOM(tok string) error {
	up := strings.ToUpper(tok)
	switch {
	case up == "L":
		s.domLast = true
		return nil
	case strings.Contains(up, "W"):
		return domField.errorf(tok, "W (nearest weekday) is not Unix cron syntax")
	case strings.Contains(up, "L"):
		return domField.errorf(tok, "L must be the whole field: go-quartz takes L (or L-n, not Unix syntax) only on its own, never in a list or range")
	}
	var err error
	s.dom, err = domField.parseSet(tok)
	return err
}

func (s *spec) parseDOW(tok string) error {
	up := strings.ToUpper(tok)
	hash := strings.Contains(up, "#")
	last := strings.HasSuffix(up, "L")
	if (hash || strings.Contains(up, "L")) && strings.ContainsAny(up, ",-/*") {
		return dowField.errorf(tok, "L and # must be the whole field (one weekday): go-quartz evaluates them for a single weekday only, never in a list, range or step")
	}
	switch {
	case up == "L":
		return dowField.errorf(tok, "L alone is ambiguous (go-quartz reads it as the last Saturday); write 6L for the last Saturday")
	case hash:
		day, nth, _ := strings.Cut(up, "#")
		d, err := dowField.value(tok, day)
		if err != nil {
			return err
		}
		n, ok := digits(nth)
		if !ok || n < 1 || n > 5 {
			return dowField.errorf(tok, "# wants 1 to 5 (the nth such weekday of the month)")
		}
		if n == 5 {
			// DayNode.getDayInMonth keeps the old day of the month when it
			// moves on from a month without a fifth such weekday.
			return dowField.errorf(tok, "#5 is refused: go-quartz v0.15.2 skips fifth weekdays (moving on from a month without one, it keeps that month's day); #1 to #4 and nL (the last one) work")
		}
		s.dowDay, s.dowNth = d%7, n
		return nil
	case last:
		d, err := dowField.value(tok, strings.TrimSuffix(up, "L"))
		if err != nil {
			return err
		}
		s.dowDay, s.dowNth = d%7, -1
		return nil
	case strings.Contains(up, "L"):
		return dowField.errorf(tok, "L must follow one weekday (5L is the last Friday)")
	}
	b, err := dowField.parseSet(tok)
	if err != nil {
		return err
	}
	if b.has(7) {
		b = b&^(1<<7) | 1 // 7 is Sunday too
	}
	s.dow = b
	return nil
}

// chooseDays applies the either-day rule of Vixie cron (and POSIX): a day
// field is restricted unless its text begins with *. Both restricted: a day
// matches when either matches, one go-quartz trigger per field. Otherwise
// both must match, which go-quartz can only express when one of them matches
// every day (its field becomes ?).
func (s *spec) chooseDays(domTok, dowTok string) error {
	domRestricted := !strings.HasPrefix(domTok, "*")
	dowRestricted := !strings.HasPrefix(dowTok, "*")
	domAll := !s.domLast && s.dom == span(1, 31)
	dowAll := s.dowNth == 0 && s.dow == span(0, 6)
	switch {
	case domRestricted && dowRestricted:
		s.either, s.useDOM, s.useDOW = true, true, true
	case dowAll:
		s.useDOM = true
	case domAll:
		s.useDOW = true
	default:
		return model.Invalid(fieldDays, "%q and %q: a day field that begins with * does not take part in the either-day rule, so cron fires only on days matching both fields; go-quartz cannot express that (one of its day fields must be ?)", domTok, dowTok)
	}
	return nil
}

// fits reports whether some day of days exists in some month of the month
// set (February has 29 days in leap years).
func (s *spec) fits(days bits) bool {
	longest := [13]int{0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
	for m := 1; m <= 12; m++ {
		if s.month.has(m) && days&span(1, longest[m]) != 0 {
			return true
		}
	}
	return false
}

// parseSet parses a list of *, numbers, names, ranges and steps.
func (f field) parseSet(tok string) (bits, error) {
	if tok == "?" {
		return 0, f.errorf(tok, "? is go-quartz syntax, not Unix cron; use *")
	}
	var b bits
	for _, elem := range strings.Split(tok, ",") {
		if elem == "" {
			return 0, f.errorf(tok, "empty list element")
		}
		base, stepText, hasStep := strings.Cut(elem, "/")
		step := 1
		if hasStep {
			n, ok := digits(stepText)
			if !ok {
				return 0, f.errorAt(tok, elem, "has a step %q that is not a number", stepText)
			}
			if n < 1 || n > f.max-f.min {
				return 0, f.errorAt(tok, elem, "has a step of %d, outside 1-%d", n, f.max-f.min)
			}
			step = n
		}
		var lo, hi int
		if base == "*" {
			lo, hi = f.min, f.max
		} else if from, to, isRange := strings.Cut(base, "-"); isRange {
			var err error
			if lo, err = f.value(tok, from); err != nil {
				return 0, err
			}
			if hi, err = f.value(tok, to); err != nil {
				return 0, err
			}
			if lo > hi {
				split := fmt.Sprintf("%d-%d,%d-%d", lo, f.max, f.min, hi)
				if f.name == fieldDOW && hi == 0 {
					split = fmt.Sprintf("%d-7", lo) // 7 is Sunday too
				}
				return 0, f.errorAt(tok, base, "runs backwards: Unix cron has no wrap-around ranges (go-quartz rejects them too); write %s", split)
			}
		} else {
			var err error
			if lo, err = f.value(tok, base); err != nil {
				return 0, err
			}
			hi = lo
			if hasStep {
				hi = f.max
				// 7 is Sunday again: whether n/s runs to 6 or to 7 differs
				// between crons whenever the step lands on 7.
				if f.name == fieldDOW && lo > 0 && (7-lo)%step == 0 {
					return 0, f.errorAt(tok, elem, "is ambiguous: crons differ on whether it runs to 6 (SAT) or 7 (SUN); write %d-6/%d or %d-7/%d", lo, step, lo, step)
				}
			}
		}
		for v := lo; v <= hi; v += step {
			b |= 1 << uint(v)
		}
	}
	return b, nil
}

// value parses one number or name of the field.
func (f field) value(tok, s string) (int, error) {
	if n, ok := digits(s); ok {
		if n < f.min || n > f.max {
			return 0, f.errorAt(tok, s, "is outside %d-%d", f.min, f.max)
		}
		return n, nil
	}
	if s == "" {
		return 0, f.errorf(tok, "a number or name is missing")
	}
	up := strings.ToUpper(s)
	for v, name := range f.names {
		if name != "" && name == up {
			return v, nil
		}
	}
	if f.names == nil {
		return 0, f.errorAt(tok, s, "is not a number")
	}
	return 0, f.errorAt(tok, s, "is not a number or a name (%s to %s)", f.names[f.min], f.names[len(f.names)-1])
}

// digits parses a plain decimal number (no sign); a long one is returned
// as 9999, out of every field's range.
func digits(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, false
		}
	}
	if len(s) > 4 {
		return 9999, true
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}
