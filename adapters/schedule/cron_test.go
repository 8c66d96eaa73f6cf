package schedule_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/schedule"
	"github.com/espmdm/espmdm/core/model"
)

func TestParseTranslates(t *testing.T) {
	tests := []struct{ expr, want string }{
		// SPEC §4's default: go-quartz numbers SUN=1, so Saturday is 7.
		{"0 8 * * 6#1", "0 0 8 ? * 7#1"},
		{"0 8 * * SAT#1", "0 0 8 ? * 7#1"},
		{"0 8 * * 0#2", "0 0 8 ? * 1#2"},
		{"0 8 * * 7#4", "0 0 8 ? * 1#4"},
		// An hour is never *, see doc.go.
		{"* * * * *", "0 * 0-23 * * ?"},
		{"  0\t8 *  * *  ", "0 0 8 * * ?"},
		{"*/15 * * * *", "0 0,15,30,45 0-23 * * ?"},
		{"1-30/5 * * * *", "0 1,6,11,16,21,26 0-23 * * ?"},
		{"5/10 * * * *", "0 5,15,25,35,45,55 0-23 * * ?"},
		{"0 9-17/4 * * *", "0 0 9,13,17 * * ?"},
		{"0 22-23,0-2 * * *", "0 0 0-2,22,23 * * ?"},
		{"0,30 8 * * *", "0 0,30 8 * * ?"},
		// 0 and 7 are Sunday; ranges, lists and steps in day-of-week.
		{"0 0 * * 0", "0 0 0 ? * 1"},
		{"0 0 * * 7", "0 0 0 ? * 1"},
		{"0 0 * * 1-5", "0 0 0 ? * 2-6"},
		{"0 0 * * mon-FRI", "0 0 0 ? * 2-6"},
		{"0 0 * * 5-7", "0 0 0 ? * 1,6,7"},
		{"0 0 * * sun,Sat", "0 0 0 ? * 1,7"},
		{"0 0 * * */2", "0 0 0 ? * 1,3,5,7"},
		{"0 0 * * 1-7/2", "0 0 0 ? * 1,2,4,6"},
		{"0 0 * * 2/2", "0 0 0 ? * 3,5,7"},
		{"0 0 * * 0-7", "0 0 0 * * ?"},
		// Months and their names.
		{"0 0 1 jan,JUL *", "0 0 0 1 1,7 ?"},
		{"0 0 1 mar-may *", "0 0 0 1 3-5 ?"},
		{"0 0 1 */3 *", "0 0 0 1 1,4,7,10 ?"},
		// Last day of the month, last weekday of the month.
		{"0 0 L * *", "0 0 0 L * ?"},
		{"0 0 l 2 *", "0 0 0 L 2 ?"},
		{"0 0 * * 5L", "0 0 0 ? * 6L"},
		{"0 0 * * 0L", "0 0 0 ? * 1L"},
		{"0 0 * * friL", "0 0 0 ? * 6L"},
		// Days 29-31 get their own trigger, see doc.go.
		{"0 0 31 * *", "0 0 0 31 * ?"},
		{"0 0 1,15,31 * *", "0 0 0 1,15 * ? | 0 0 0 31 * ?"},
		{"0 0 */2 * *", "0 0 0 1,3,5,7,9,11,13,15,17,19,21,23,25,27 * ? | 0 0 0 29,31 * ?"},
		{"0 12 29 2 *", "0 0 12 29 2 ?"},
		{"0 0 1,30 2 *", "0 0 0 1 2 ?"}, // February 30 never comes
		// The either-day rule: both day fields restricted, two triggers.
		{"0 0 13 * 5", "0 0 0 13 * ? | 0 0 0 ? * 6"},
		{"0 0 1 * 6#1", "0 0 0 1 * ? | 0 0 0 ? * 7#1"},
		{"0 0 L * 1", "0 0 0 L * ? | 0 0 0 ? * 2"},
		{"0 0 1-31 * 1", "0 0 0 * * ? | 0 0 0 ? * 2"},
		// A day field beginning with * is not restricted: the other decides.
		{"0 0 */1 * 1", "0 0 0 ? * 2"},
		{"0 0 1 * */1", "0 0 0 1 * ?"},
		{"0 0 * * *", "0 0 0 * * ?"},
	}
	for _, tt := range tests {
		c, err := schedule.Parse(tt.expr, "")
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.expr, err)
			continue
		}
		if got := c.Quartz(); got != tt.want {
			t.Errorf("Parse(%q).Quartz() = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct {
		expr, tz  string
		wantField string
		wantErr   string
	}{
		// Not five fields.
		{"", "", "expression", "0 fields, want 5"},
		{"0 8 * *", "", "expression", "4 fields, want 5"},
		{"0 0 8 * * ?", "", "expression", "seconds and years"},
		{"0 0 8 * * ? 2026", "", "expression", "seconds and years"},
		{"@daily", "", "expression", "@-shortcuts"},
		// Out of range, bad names, bad steps, garbage.
		{"60 * * * *", "", "minute", `"60" is outside 0-59`},
		{"* 24 * * *", "", "hour", `"24" is outside 0-23`},
		{"* * 0 * *", "", "day-of-month", `"0" is outside 1-31`},
		{"* * 32 * *", "", "day-of-month", "outside 1-31"},
		{"* * * 13 *", "", "month", "outside 1-12"},
		{"* * * 0 *", "", "month", "outside 1-12"},
		{"* * * * 8", "", "day-of-week", "outside 0-7"},
		{"* * 1-99999 * *", "", "day-of-month", "outside 1-31"},
		{"* * * FOO *", "", "month", `"FOO" is not a number or a name (JAN to DEC)`},
		{"* * * JANUARY *", "", "month", "not a number or a name"},
		{"* * * * MONDAY", "", "day-of-week", "(SUN to SAT)"},
		{"* * * * 1-fri2", "", "day-of-week", `"fri2" is not a number or a name`},
		{"* * MON * *", "", "day-of-month", `"MON" is not a number`},
		{"x * * * *", "", "minute", `"x" is not a number`},
		{"+5 * * * *", "", "minute", "not a number"},
		{"-5 * * * *", "", "minute", "missing"},
		{"1-2-3 * * * *", "", "minute", `"2-3" is not a number`},
		{"5, * * * *", "", "minute", "empty list element"},
		{"*/0 * * * *", "", "minute", "step of 0"},
		{"*/60 * * * *", "", "minute", "step of 60, outside 1-59"},
		{"*/x * * * *", "", "minute", `step "x"`},
		{"1/2/3 * * * *", "", "minute", "not a number"},
		{"? * * * *", "", "minute", "? is go-quartz syntax"},
		{"0 0 ? * 1", "", "day-of-month", "? is go-quartz syntax"},
		// Backwards (wrap-around) ranges.
		{"* * * * FRI-MON", "", "day-of-week", `"FRI-MON" runs backwards`},
		{"* * * * FRI-SUN", "", "day-of-week", "write 5-7"},
		{"0 22-2 * * *", "", "hour", "22-23,0-2"},
		{"* * * DEC-JAN *", "", "month", "runs backwards"},
		// What go-quartz cannot express exactly.
		{"* * L,15 * *", "", "day-of-month", "L must be the whole field"},
		{"* * L-3 * *", "", "day-of-month", "L must be the whole field"},
		{"* * 15W * *", "", "day-of-month", "W (nearest weekday)"},
		{"* * LW * *", "", "day-of-month", "W (nearest weekday)"},
		{"* * * * 5L,1", "", "day-of-week", "L and # must be the whole field"},
		{"* * * * 1,6#1", "", "day-of-week", "L and # must be the whole field"},
		{"* * * * 1-5L", "", "day-of-week", "L and # must be the whole field"},
		{"* * * * L", "", "day-of-week", "L alone is ambiguous"},
		{"* * * * 5L2", "", "day-of-week", "L must follow one weekday"},
		{"* * * * 6#0", "", "day-of-week", "# wants 1 to 5"},
		{"* * * * 6#6", "", "day-of-week", "# wants 1 to 5"},
		{"* * * * 6#", "", "day-of-week", "# wants 1 to 5"},
		{"* * * * #1", "", "day-of-week", "missing"},
		{"* * * * 8#1", "", "day-of-week", "outside 0-7"},
		{"* * * * 6#5", "", "day-of-week", "#5 is refused: go-quartz v0.15.2 skips fifth weekdays"},
		{"* * * * 1/2", "", "day-of-week", `"1/2" is ambiguous`},
		{"* * * * MON/3", "", "day-of-week", "write 1-6/3 or 1-7/3"},
		// Both must match: go-quartz has no AND of its day fields.
		{"0 0 */2 * 1", "", "day-of-month/day-of-week", "matching both fields"},
		{"0 0 1 * */2", "", "day-of-month/day-of-week", "one of its day fields must be ?"},
		{"0 0 */2 * */3", "", "day-of-month/day-of-week", "either-day rule"},
		// Never fires.
		{"0 0 30 2 *", "", "day-of-month", `"30" never falls in month "2"`},
		{"0 0 31 4,6,9,11 *", "", "day-of-month", "would never fire"},
		{"0 0 30-31 feb 1", "", "day-of-month", "never falls"},
		// Time zones.
		{"0 8 * * *", "Mars/Olympus", schedule.FieldTimeZone, `"Mars/Olympus" is not a known IANA time zone`},
		{"0 8 * * *", "Local", "time zone", "not an IANA time zone name"},
		{"0 8 * * *", "../etc/passwd", "time zone", "not a known IANA time zone"},
	}
	for _, tt := range tests {
		c, err := schedule.Parse(tt.expr, tt.tz)
		if err == nil {
			t.Errorf("Parse(%q, %q) = %q, want an error", tt.expr, tt.tz, c.Quartz())
			continue
		}
		var ve *model.ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("Parse(%q, %q) error %v (%T) is not a *model.ValidationError", tt.expr, tt.tz, err, err)
			continue
		}
		if ve.Field != tt.wantField || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Parse(%q, %q) error = %q (field %q), want field %q mentioning %q", tt.expr, tt.tz, err, ve.Field, tt.wantField, tt.wantErr)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("Parse(%q, %q) error %q has more than one line", tt.expr, tt.tz, err)
		}
	}
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// The expected times were worked out by hand and checked with a separate
// brute-force evaluator (Python's zoneinfo, whose fold=0 resolves skipped
// and repeated wall-clock times as doc.go says).
func TestNext(t *testing.T) {
	tests := []struct {
		name, expr, tz, from string
		want                 []string
	}{
		{"first Saturday", "0 8 * * 6#1", "", "2026-12-01T00:00:00Z",
			[]string{"2026-12-05T08:00:00Z", "2027-01-02T08:00:00Z", "2027-02-06T08:00:00Z"}},
		{"first Saturday in Berlin across DST", "0 8 * * 6#1", "Europe/Berlin", "2026-03-01T00:00:00Z",
			[]string{"2026-03-07T07:00:00Z", "2026-04-04T06:00:00Z", "2026-05-02T06:00:00Z"}},
		{"first Saturday in Kolkata", "0 8 * * 6#1", "Asia/Kolkata", "2026-12-01T00:00:00Z",
			[]string{"2026-12-05T02:30:00Z", "2027-01-02T02:30:00Z"}},
		{"strictly after a fire time", "0 8 * * 6#1", "", "2026-12-05T08:00:00Z",
			[]string{"2027-01-02T08:00:00Z"}},
		{"just before a fire time", "0 8 * * 6#1", "", "2026-12-05T07:59:59.999Z",
			[]string{"2026-12-05T08:00:00Z"}},
		{"just after a fire time", "0 8 * * 6#1", "", "2026-12-05T08:00:00.001Z",
			[]string{"2027-01-02T08:00:00Z"}},
		{"Sunday as 0", "0 0 * * 0", "", "2026-04-15T00:00:00Z",
			[]string{"2026-04-19T00:00:00Z", "2026-04-26T00:00:00Z"}},
		{"Sunday as 7", "0 0 * * 7", "", "2026-04-15T00:00:00Z",
			[]string{"2026-04-19T00:00:00Z", "2026-04-26T00:00:00Z"}},
		{"names", "30 6 * jan,JUL Mon-Fri", "", "2026-06-30T12:00:00Z",
			[]string{"2026-07-01T06:30:00Z", "2026-07-02T06:30:00Z", "2026-07-03T06:30:00Z", "2026-07-06T06:30:00Z"}},
		{"range step", "0 9-17/4 * * *", "", "2026-04-15T00:00:00Z",
			[]string{"2026-04-15T09:00:00Z", "2026-04-15T13:00:00Z", "2026-04-15T17:00:00Z", "2026-04-16T09:00:00Z"}},
		{"star step", "*/20 8 * * *", "", "2026-04-15T08:10:00Z",
			[]string{"2026-04-15T08:20:00Z", "2026-04-15T08:40:00Z", "2026-04-16T08:00:00Z"}},
		{"start step", "5/10 * * * *", "", "2026-04-15T10:50:00Z",
			[]string{"2026-04-15T10:55:00Z", "2026-04-15T11:05:00Z"}},
		{"range step minutes", "1-30/5 0 1 1 *", "", "2026-01-01T00:00:00Z",
			[]string{"2026-01-01T00:01:00Z", "2026-01-01T00:06:00Z", "2026-01-01T00:11:00Z", "2026-01-01T00:16:00Z",
				"2026-01-01T00:21:00Z", "2026-01-01T00:26:00Z", "2027-01-01T00:01:00Z"}},
		{"list of ranges", "0 22-23,0-1 * * *", "", "2026-04-15T12:00:00Z",
			[]string{"2026-04-15T22:00:00Z", "2026-04-15T23:00:00Z", "2026-04-16T00:00:00Z", "2026-04-16T01:00:00Z"}},
		{"list", "0 0 1,15 * *", "", "2026-04-15T00:00:00Z",
			[]string{"2026-05-01T00:00:00Z", "2026-05-15T00:00:00Z", "2026-06-01T00:00:00Z"}},
		{"last day of the month", "0 0 L * *", "", "2028-01-15T00:00:00Z",
			[]string{"2028-01-31T00:00:00Z", "2028-02-29T00:00:00Z", "2028-03-31T00:00:00Z", "2028-04-30T00:00:00Z"}},
		{"last day of February", "0 0 L 2 *", "", "2026-01-01T00:00:00Z",
			[]string{"2026-02-28T00:00:00Z", "2027-02-28T00:00:00Z", "2028-02-29T00:00:00Z"}},
		{"last Friday", "59 23 * * 5L", "", "2026-01-01T00:00:00Z",
			[]string{"2026-01-30T23:59:00Z", "2026-02-27T23:59:00Z", "2026-03-27T23:59:00Z"}},
		{"second Monday", "0 12 * * 1#2", "", "2026-01-01T00:00:00Z",
			[]string{"2026-01-12T12:00:00Z", "2026-02-09T12:00:00Z", "2026-03-09T12:00:00Z"}},
		{"either day: every 13th and every Friday", "0 0 13 * 5", "", "2026-02-01T00:00:00Z",
			[]string{"2026-02-06T00:00:00Z", "2026-02-13T00:00:00Z", "2026-02-20T00:00:00Z", "2026-02-27T00:00:00Z",
				"2026-03-06T00:00:00Z", "2026-03-13T00:00:00Z"}},
		{"either day: a 13th that is a Monday", "0 0 13 * 5", "", "2026-03-14T00:00:00Z",
			[]string{"2026-03-20T00:00:00Z", "2026-03-27T00:00:00Z", "2026-04-03T00:00:00Z", "2026-04-10T00:00:00Z",
				"2026-04-13T00:00:00Z", "2026-04-17T00:00:00Z"}},
		{"February 29", "0 12 29 2 *", "", "2026-01-01T00:00:00Z",
			[]string{"2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"}},
		{"February 29 skips 2100", "0 12 29 2 *", "", "2096-03-01T00:00:00Z",
			[]string{"2104-02-29T12:00:00Z"}},
		// go-quartz v0.15.2 alone gets these wrong (doc.go).
		{"31st from a 30-day month", "0 0 31 * *", "", "2026-04-15T00:00:00Z",
			[]string{"2026-05-31T00:00:00Z", "2026-07-31T00:00:00Z", "2026-08-31T00:00:00Z"}}, // go-quartz: 2026-05-01
		{"every hour of a day", "0 * 15 * *", "", "2026-04-15T22:30:00Z",
			[]string{"2026-04-15T23:00:00Z", "2026-05-15T00:00:00Z"}}, // go-quartz: 2026-04-16T00:00
		{"1st after a short February", "36 * 1,16,31 * *", "", "2027-02-16T23:40:00Z",
			[]string{"2027-03-01T00:36:00Z"}}, // go-quartz: 2027-03-16
		{"weekdays of months apart", "0 0 * 8,10 0-2", "", "2029-08-27T12:00:00Z",
			[]string{"2029-08-28T00:00:00Z", "2029-10-01T00:00:00Z", "2029-10-02T00:00:00Z"}}, // go-quartz: 2029-10-02 first
		// DST: a skipped time fires as if the clock had not moved, a repeated one once, at its first occurrence.
		{"Berlin spring: 02:30 is 03:30 CEST", "30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z",
			[]string{"2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"}},
		{"Berlin autumn: 02:30 CEST, not CET", "30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z",
			[]string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}}, // go-quartz: 01:30Z, the second
		{"Berlin autumn: the repeated hour once", "*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z",
			[]string{"2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T02:00:00Z", "2026-10-25T02:30:00Z"}},
		{"Berlin spring: every half hour", "*/30 * * * *", "Europe/Berlin", "2026-03-29T00:45:00Z",
			[]string{"2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:00:00Z"}},
		{"New York autumn: from the repeated hour", "*/15 * * * *", "America/New_York", "2026-11-01T06:10:00Z",
			[]string{"2026-11-01T07:00:00Z", "2026-11-01T07:15:00Z", "2026-11-01T07:30:00Z"}}, // go-quartz: ErrTriggerExpired
		{"New York spring: 02:30 is 03:30 EDT", "30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z",
			[]string{"2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"}}, // go-quartz: 01:30 EST
		{"Lord Howe's half-hour change", "15 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00Z",
			[]string{"2026-10-03T15:45:00Z", "2026-10-04T15:15:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := schedule.Parse(tt.expr, tt.tz)
			if err != nil {
				t.Fatalf("Parse(%q, %q): %v", tt.expr, tt.tz, err)
			}
			prev := mustTime(t, tt.from)
			for i, w := range tt.want {
				got, err := c.Next(prev)
				if err != nil {
					t.Fatalf("Next(%v): %v", prev, err)
				}
				if want := mustTime(t, w); !got.Equal(want) || got.Location() != time.UTC {
					t.Fatalf("%q in %q: fire %d after %s = %v, want %v", tt.expr, tt.tz, i, tt.from, got, want)
				}
				prev = got
			}
		})
	}
}

func TestNextOutOfRange(t *testing.T) {
	c, err := schedule.Parse("0 8 * * *", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range []time.Time{
		time.Date(1969, 12, 31, 23, 59, 0, 0, time.UTC),
		time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC),
		{},
	} {
		if got, err := c.Next(from); err == nil {
			t.Errorf("Next(%v) = %v, want an error", from, got)
		}
	}
}

func TestNextIgnoresTheZoneOfAfter(t *testing.T) {
	c, err := schedule.Parse("0 8 * * *", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	utc := mustTime(t, "2026-06-01T12:00:00Z")
	tokyo, _ := time.LoadLocation("Asia/Tokyo")
	a, errA := c.Next(utc)
	b, errB := c.Next(utc.In(tokyo))
	if errA != nil || errB != nil || !a.Equal(b) || !a.Equal(mustTime(t, "2026-06-02T06:00:00Z")) {
		t.Errorf("Next = %v, %v (%v, %v); want 2026-06-02T06:00:00Z twice", a, b, errA, errB)
	}
}

func TestAccessors(t *testing.T) {
	c, err := schedule.Parse(" 0 8 * * 6#1", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.String(), " 0 8 * * 6#1"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := c.Location().String(); got != "Europe/Berlin" {
		t.Errorf("Location() = %q, want Europe/Berlin", got)
	}
	if got, want := c.Quartz(), "0 0 8 ? * 7#1"; got != want {
		t.Errorf("Quartz() = %q, want %q", got, want)
	}
	u, err := schedule.Parse("0 8 * * *", "")
	if err != nil {
		t.Fatal(err)
	}
	if u.Location() != time.UTC {
		t.Errorf(`Parse(..., "").Location() = %v, want UTC`, u.Location())
	}
}

func TestNextConcurrent(t *testing.T) {
	c, err := schedule.Parse("0 0 13 * 5", "Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	from := mustTime(t, "2026-03-14T00:00:00Z")
	want, err := c.Next(from)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan time.Time)
	for range 8 {
		go func() {
			got, _ := c.Next(from)
			done <- got
		}()
	}
	for range 8 {
		if got := <-done; !got.Equal(want) {
			t.Errorf("concurrent Next = %v, want %v", got, want)
		}
	}
}
