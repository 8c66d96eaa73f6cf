package schedule_test

import (
	"errors"
	"testing"
	"time"

	"github.com/reugn/go-quartz/quartz"
)

// These tests pin what go-quartz v0.15.2 itself does with the constructs
// Parse emits, and the bugs doc.go works around. When an upgrade fixes a
// bug, its test here fails: the workaround can then go.

func quartzNext(t *testing.T, expr string, loc *time.Location, from string) (time.Time, error) {
	t.Helper()
	tr, err := quartz.NewCronTriggerWithLoc(expr, loc)
	if err != nil {
		t.Fatalf("NewCronTriggerWithLoc(%q): %v", expr, err)
	}
	n, err := tr.NextFireTime(mustTime(t, from).UnixNano())
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, n).UTC(), nil
}

func TestQuartzSemantics(t *testing.T) {
	tests := []struct {
		expr, from string
		want       []string
	}{
		// Day-of-week counts SUN=1 .. SAT=7.
		{"0 0 0 ? * 1", "2026-04-15T00:00:30Z", []string{"2026-04-19T00:00:00Z", "2026-04-26T00:00:00Z"}},
		{"0 0 0 ? * 7", "2026-04-15T00:00:30Z", []string{"2026-04-18T00:00:00Z", "2026-04-25T00:00:00Z"}},
		{"0 0 0 ? * 2-6", "2026-04-16T00:00:30Z", []string{"2026-04-17T00:00:00Z", "2026-04-20T00:00:00Z"}},
		{"0 0 0 ? * 1,6,7", "2026-04-16T00:00:30Z", []string{"2026-04-17T00:00:00Z", "2026-04-18T00:00:00Z", "2026-04-19T00:00:00Z", "2026-04-24T00:00:00Z"}},
		{"0 0 8 ? * 7#1", "2026-12-01T00:00:30Z", []string{"2026-12-05T08:00:00Z", "2027-01-02T08:00:00Z"}},
		{"0 0 8 ? * 1#4", "2026-04-01T00:00:30Z", []string{"2026-04-26T08:00:00Z", "2026-05-24T08:00:00Z"}},
		{"0 0 0 ? * 6L", "2026-04-01T00:00:30Z", []string{"2026-04-24T00:00:00Z", "2026-05-29T00:00:00Z"}},
		{"0 0 0 L * ?", "2028-02-01T00:00:30Z", []string{"2028-02-29T00:00:00Z", "2028-03-31T00:00:00Z"}},
		{"0 0 0 L 2 ?", "2026-03-01T00:00:30Z", []string{"2027-02-28T00:00:00Z", "2028-02-29T00:00:00Z"}},
		{"0 0 12 29 2 ?", "2026-01-01T00:00:30Z", []string{"2026-03-01T12:00:00Z"}}, // and then see nextWall
		{"0 0 0-2,22,23 * * ?", "2026-04-15T12:00:30Z", []string{"2026-04-15T22:00:00Z", "2026-04-15T23:00:00Z", "2026-04-16T00:00:00Z"}},
		{"0 0 0 1 3-5 ?", "2026-04-15T12:00:30Z", []string{"2026-05-01T00:00:00Z", "2027-03-01T00:00:00Z"}},
		{"0 * 0-23 * * ?", "2026-04-15T23:59:30Z", []string{"2026-04-16T00:00:00Z", "2026-04-16T00:01:00Z"}},
	}
	for _, tt := range tests {
		prev := tt.from
		for i, w := range tt.want {
			got, err := quartzNext(t, tt.expr, time.UTC, prev)
			if err != nil || !got.Equal(mustTime(t, w)) {
				t.Errorf("go-quartz %q: fire %d after %s = %v (%v), want %s", tt.expr, i, prev, got, err, w)
				break
			}
			prev = got.Add(30 * time.Second).Format(time.RFC3339)
		}
	}
}

func TestQuartzBugs(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		bug, expr string
		loc       *time.Location
		from      string
		got       string // what go-quartz returns; "" for an error
		right     string
	}{
		{"a day 29-31 in a shorter month is carried into the next", "0 0 0 31 * ?", time.UTC,
			"2026-04-15T00:00:00Z", "2026-05-01T00:00:00Z", "2026-05-31T00:00:00Z"},
		{"... and past that month's first days", "0 36 0-23 1,16,31 * ?", time.UTC,
			"2027-02-16T23:40:30Z", "2027-03-03T00:36:00Z", "2027-03-01T00:36:00Z"}, // and from there 03-16
		{"a * hour counts to 59 and is carried into the next day", "0 0 * 15 * ?", time.UTC,
			"2026-04-15T23:30:00Z", "2026-04-16T00:00:00Z", "2026-05-15T00:00:00Z"},
		{"weekdays keep the day of the month across a month jump (from a fire time)", "0 0 0 ? 8,10 1-3", time.UTC,
			"2029-08-28T00:00:00Z", "2029-10-02T00:00:00Z", "2029-10-01T00:00:00Z"},
		{"#5 keeps the day of a month without a fifth weekday", "0 16 0-23 ? * 5#5", time.UTC,
			"2025-04-29T12:00:30Z", "2025-07-31T00:16:00Z", "2025-05-29T00:16:00Z"},
		{"gives up in the second pass of a repeated hour west of UTC", "0 0/15 * * * ?", ny,
			"2026-11-01T06:10:00Z", "", "2026-11-01T07:00:00Z"},
		{"moves a skipped time back before the change west of UTC", "0 30 2 * * ?", ny,
			"2026-03-07T12:00:00Z", "2026-03-08T06:30:00Z", "2026-03-08T07:30:00Z"},
	}
	for _, tt := range tests {
		got, err := quartzNext(t, tt.expr, tt.loc, tt.from)
		switch {
		case tt.got == "" && !errors.Is(err, quartz.ErrTriggerExpired):
			t.Errorf("go-quartz %q after %s = %v, %v; it used to fail (%s): revisit doc.go", tt.expr, tt.from, got, err, tt.bug)
		case tt.got != "" && (err != nil || !got.Equal(mustTime(t, tt.got))):
			t.Errorf("go-quartz %q after %s = %v, %v; it used to be %s (%s; right: %s): revisit doc.go", tt.expr, tt.from, got, err, tt.got, tt.bug, tt.right)
		}
	}
}

func TestQuartzParser(t *testing.T) {
	// What go-quartz cannot express, so Parse refuses it.
	for _, expr := range []string{
		"0 0 0 ? * 6-2",       // wrap-around range
		"0 0 0 L,15 * ?",      // L in a list
		"0 0 0 ? * 6L,2",      // nL in a list
		"0 0 0 ? * 6#1,2",     // n#k in a list
		"0 0 0 13 * 6",        // both day fields
		"0 0 0 ? * 1-5#2",     // n#k on a range
		"0 0 0 ? * 2#6",       // no sixth weekday
		"0 0 0 1 * ? extra x", // 8 fields
	} {
		if err := quartz.ValidateCronExpression(expr); err == nil {
			t.Errorf("go-quartz accepts %q; it used to refuse it", expr)
		}
	}
	// It does not check list values: Parse validates every value itself.
	if err := quartz.ValidateCronExpression("0 0 0 ? * 1,9"); err != nil {
		t.Errorf("go-quartz refuses %q: %v; it used to accept it", "0 0 0 ? * 1,9", err)
	}
}
