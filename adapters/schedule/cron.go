package schedule

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/reugn/go-quartz/quartz"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Cron is a parsed Unix cron schedule in a time zone. It is safe for
// concurrent use.
type Cron struct {
	expr   string
	loc    *time.Location
	spec   spec
	quartz []string
	// triggers are the go-quartz triggers of quartz, in UTC: Next gives
	// them wall-clock times as UTC instants, one UTC offset of the zone at
	// a time, and applies the zone's changes itself (see doc.go).
	triggers []*quartz.CronTrigger
}

var _ ports.Schedule = (*Cron)(nil)

// FieldTimeZone is the Field of the *model.ValidationError that Parse
// returns for an invalid time zone. Its other errors name a cron field
// ("minute" ... "day-of-week", "day-of-month/day-of-week" for the two
// together) or "expression" (the field count).
const FieldTimeZone = "time zone"

// The names of the fields, as error messages use them.
const (
	fieldExpr     = "expression"
	fieldMinute   = "minute"
	fieldHour     = "hour"
	fieldDOM      = "day-of-month"
	fieldMonth    = "month"
	fieldDOW      = "day-of-week"
	fieldDays     = "day-of-month/day-of-week"
	fieldTimeZone = FieldTimeZone
)

// Parse parses a 5-field Unix cron expression (minute hour day-of-month month
// day-of-week) in the IANA zone tz ("" = UTC). Errors are
// *model.ValidationError values naming the field at fault.
func Parse(expr, tz string) (*Cron, error) {
	loc, err := loadLocation(tz)
	if err != nil {
		return nil, err
	}
	sp, err := parseSpec(expr)
	if err != nil {
		return nil, err
	}
	c := &Cron{expr: expr, loc: loc, spec: sp, quartz: sp.quartz()}
	for _, q := range c.quartz {
		tr, err := quartz.NewCronTriggerWithLoc(q, time.UTC)
		if err != nil {
			// parseSpec only emits what go-quartz accepts; the tests hold it.
			return nil, fmt.Errorf("schedule: go-quartz rejects %q, the translation of %q: %w", q, expr, err)
		}
		c.triggers = append(c.triggers, tr)
	}
	return c, nil
}

func loadLocation(tz string) (*time.Location, error) {
	switch tz {
	case "", "UTC":
		return time.UTC, nil
	case "Local":
		return nil, model.Invalid(fieldTimeZone, "%q is not an IANA time zone name (e.g. Europe/Berlin)", tz)
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, model.Invalid(fieldTimeZone, "%q is not a known IANA time zone (e.g. Europe/Berlin)", tz)
	}
	return loc, nil
}

// String returns the original expression.
func (c *Cron) String() string { return c.expr }

// Location returns the zone.
func (c *Cron) Location() *time.Location { return c.loc }

// Quartz returns the go-quartz expression Parse translated to (seconds
// first). When both day fields are restricted the schedule is the union of
// two go-quartz expressions, one per day field; they are joined by " | ".
func (c *Cron) Quartz() string { return strings.Join(c.quartz, " | ") }

// The instants Next accepts: go-quartz computes in Unix nanoseconds (int64,
// up to 2262) and the longest gap of a schedule is a few decades.
var (
	minAfter = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	maxAfter = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

const (
	// maxCandidates bounds the wrong go-quartz candidates nextWall skips
	// in a row; in practice there is at most one per month.
	maxCandidates = 1000
	// maxPeriods bounds the UTC-offset periods of the zone Next looks
	// through: two a year, and no schedule waits more than a few decades.
	maxPeriods = 1000
)

// Next returns the first fire time strictly after after (in UTC), for after
// in the years 1970 to 2199.
//
// Fire times are the wall-clock times in the zone that the expression
// matches. A wall-clock time that a forward DST change skips fires as if the
// clock had not been moved (02:30 in the hour skipped at 02:00 fires at
// 03:30 new time); one that a backward change repeats fires once, at its
// first occurrence.
func (c *Cron) Next(after time.Time) (time.Time, error) {
	if after.Before(minAfter) || !after.Before(maxAfter) {
		return time.Time{}, fmt.Errorf("schedule %q: %s is outside the supported years 1970 to 2199", c.expr, after.Format(time.RFC3339))
	}
	// Fire times are whole minutes: strictly after after is after its
	// whole second.
	lo := time.Unix(after.Unix(), 0)
	p := periodOf(lo, c.loc)
	for range maxPeriods {
		best, err := c.nextInPeriod(p, lo)
		if err != nil {
			return time.Time{}, err
		}
		if !best.IsZero() {
			return best.UTC(), nil
		}
		if p.end.IsZero() {
			break // the zone changes no more, and nothing fires in it
		}
		p = periodOf(p.end, c.loc)
	}
	return time.Time{}, fmt.Errorf("schedule %q: no fire time after %s", c.expr, after.UTC().Format(time.RFC3339))
}

// period is a span of a zone with one UTC offset: [start, end), zero when
// unbounded; prevOff is the offset before start.
type period struct {
	start, end   time.Time
	off, prevOff int
}

func periodOf(t time.Time, loc *time.Location) period {
	lt := t.In(loc)
	start, end := lt.ZoneBounds()
	_, off := lt.Zone()
	prevOff := off
	if !start.IsZero() {
		_, prevOff = start.Add(-time.Second).In(loc).Zone()
	}
	return period{start: start, end: end, off: off, prevOff: prevOff}
}

// nextInPeriod is the first fire time after lo in p, zero when there is
// none.
func (c *Cron) nextInPeriod(p period, lo time.Time) (time.Time, error) {
	var best time.Time
	// The wall-clock times of the period. Those a backward change at its
	// start repeats have fired at their first occurrence, before start.
	from := lo
	if !p.start.IsZero() {
		first := p.start
		if back := p.prevOff - p.off; back > 0 {
			first = p.start.Add(time.Duration(back) * time.Second)
		}
		if from.Before(first) {
			from = first.Add(-time.Second)
		}
	}
	t, err := c.nextFixed(p.off, from)
	if err != nil {
		return time.Time{}, err
	}
	if p.end.IsZero() || t.Before(p.end) {
		best = t
	}
	// The wall-clock times a forward change at its start skips fire as if
	// the clock had not moved: in the old offset, within the gap.
	if gap := p.off - p.prevOff; gap > 0 && !p.start.IsZero() && lo.Before(p.start.Add(time.Duration(gap)*time.Second)) {
		from := lo
		if from.Before(p.start) {
			from = p.start.Add(-time.Second)
		}
		t, err := c.nextFixed(p.prevOff, from)
		if err != nil {
			return time.Time{}, err
		}
		if t.Before(p.start.Add(time.Duration(gap)*time.Second)) && (best.IsZero() || t.Before(best)) {
			best = t
		}
	}
	return best, nil
}

// nextFixed is the first instant after lo whose wall-clock time in the fixed
// UTC offset off (seconds east) matches, computed by go-quartz on wall-clock
// times written as UTC instants.
func (c *Cron) nextFixed(off int, lo time.Time) (time.Time, error) {
	shift := time.Duration(off) * time.Second
	wall := lo.UTC().Add(shift)
	var best time.Time
	for _, tr := range c.triggers {
		t, err := c.nextWall(tr, wall)
		if err != nil {
			return time.Time{}, err
		}
		if best.IsZero() || t.Before(best) {
			best = t
		}
	}
	return best.Add(-shift), nil
}

// nextWall is the first wall-clock time after wall that tr fires at and the
// expression matches. Two go-quartz v0.15.2 bugs are worked around (see
// doc.go): go-quartz is always asked from 30 seconds past a minute, which
// is never a fire time, so that it takes the path that resets the day
// after a month change; and a candidate that does not match (a day 31 that
// time.Date moved into the next month) is skipped.
func (c *Cron) nextWall(tr *quartz.CronTrigger, wall time.Time) (time.Time, error) {
	prev := wall
	for range maxCandidates {
		// The first fire time after prev is the first after its minute's
		// :30, fire times being whole minutes.
		ask := prev.Truncate(time.Minute).Add(30 * time.Second)
		n, err := tr.NextFireTime(ask.UnixNano())
		if err == nil && n <= ask.UnixNano() {
			err = errors.New("not after the time asked")
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("schedule %q: go-quartz after %s: %w", c.expr, ask.Format(time.RFC3339), err)
		}
		t := time.Unix(0, n).UTC()
		if c.spec.matches(t) {
			return t, nil
		}
		prev = t
	}
	return time.Time{}, fmt.Errorf("schedule %q: go-quartz found no fire time after %s (wall-clock)", c.expr, wall.Format(time.RFC3339))
}
