// Package schedule parses the rotation schedule, ROTATION_CRON in ROTATION_TZ
// (SPEC §4): standard 5-field Unix cron, translated exactly into go-quartz
// (github.com/reugn/go-quartz v0.15.2) cron expressions, or refused with an
// error naming the field and the reason. Fire times are computed by
// go-quartz. [Cron] implements ports.Schedule.
//
// # Grammar
//
//	minute hour day-of-month month day-of-week
//
// Fields are separated by blanks. Each is a list (a,b,...) of elements:
//
//	n           a number, or a name: JAN-DEC in month, SUN-SAT in
//	            day-of-week (any case)
//	*           every value of the field
//	a-b         a range; a must not be after b (no wrap-around)
//	*/s a-b/s   every s-th value of the field or of the range
//	n/s         every s-th value from n to the end of the field
//
// Ranges are minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 and
// day-of-week 0-7, where 0 and 7 are both Sunday. A step is 1 up to the
// width of its field (1-59 for minutes). Besides, as the whole field:
//
//	L     (day-of-month) the last day of the month
//	nL    (day-of-week) the last weekday n of the month: 5L, FRIL
//	n#k   (day-of-week) the k-th weekday n of the month, k 1-4: 6#1
//
// # The either-day rule
//
// As in Vixie cron (and POSIX), a day field is restricted unless its text
// begins with *. When both day fields are restricted, a day matches when
// either matches: "0 0 13 * 5" fires on every 13th and on every Friday.
// Otherwise both must match. So "*/2" counts as unrestricted, as in Vixie
// cron, which tests the first character only: "0 0 */2 * 1" would fire on
// the odd days that are Mondays.
//
// # Translation
//
// Parse computes the set of values of each field and writes it for
// go-quartz as numbers, ranges and lists, seconds 0 first: "*/15 * * * *" is
// "0 0,15,30,45 0-23 * * ?". Day-of-week is renumbered SUN=1 .. SAT=7
// ("6#1", the first Saturday, is "7#1"); L, nL and n#k are kept. go-quartz
// needs one day field to be ?: the unrestricted one, or, when a day field
// beginning with * still restricts (the "*/2" and "1" above), the expression
// is refused, as go-quartz cannot require both. Under the either-day rule
// the schedule is the union of two go-quartz expressions, one per day field
// (Quartz joins them with " | "), and Next takes the earlier fire time.
//
// # Refused
//
// Besides invalid expressions (wrong field count, numbers out of range,
// unknown names, step 0, backwards ranges, text that is no number), Parse
// refuses what go-quartz cannot compute exactly, and non-Unix syntax:
//
//   - both day fields restricted where one begins with * (see above);
//   - L, nL or n#k in a list, range or step, and L alone in day-of-week:
//     go-quartz takes them only as the whole field (its regexps
//     ^L(-[0-9]+)?$, ^[a-zA-Z0-9]*L$ and ^[a-zA-Z0-9]+#[0-9]+$) and
//     evaluates them for one weekday; its L alone means the last Saturday;
//   - n#5: go-quartz skips fifth weekdays when it searches from a month
//     without one (DayNode.getDayInMonth moves on to the next month but
//     keeps the old day of the month, then skips a fifth weekday on an
//     earlier day); the last such weekday is nL;
//   - n/s in day-of-week when the step would land on 7: crons differ on
//     whether it runs to 6 or to 7 (Sunday); write n-6/s or n-7/s;
//   - a day-of-month that none of the months has ("0 0 30 2 *"): it would
//     never fire, and go-quartz would search without end;
//   - W, L-n, ?, 6 or 7 fields, @-shortcuts: go-quartz or other crons'
//     syntax, not Unix cron.
//
// # Time zones
//
// Fire times are the wall-clock times in the zone that the expression
// matches. Across a DST change, as in RFC 5545 (§3.3.5) and java.time: a
// wall-clock time that a forward change skips fires as if the clock had not
// been moved, in the offset before the change (02:30 on the day Berlin
// jumps from 02:00 to 03:00 fires at 03:30 CEST); one that a backward change
// repeats fires once, at its first occurrence (so "*/15 * * * *" does not
// fire in the repeated hour's second pass).
//
// # go-quartz v0.15.2 bugs worked around
//
// Found by reading its source and by this package's tests, which compare
// Next with a brute-force evaluator for thousands of random expressions
// (quartz_test.go pins each bug, so an upgrade that fixes one shows):
//
//   - In a zone with DST, NextFireTime returns ErrTriggerExpired when asked
//     from the second pass of a repeated hour west of UTC, and time.Date,
//     which it relies on, moves a skipped time back before the change west
//     of UTC and picks the second pass of a repeated time east of it. So
//     Next hands go-quartz wall-clock times as UTC instants, one UTC offset
//     of the zone at a time (time.Location.ZoneBounds), and applies the rule
//     above itself.
//   - The hour node counts up to 59 (csm.NewCommonNode(prev.Hour(), 0, 59,
//     ...)): for a * hour, hour 24 is carried into the next day whatever its
//     date. A full hour field is written 0-23.
//   - A day-of-month value beyond the length of the month (31 in April) is
//     set anyway when go-quartz advances the day, and time.Date carries it
//     into the next month: a wrong candidate (May 1 for "31"), from which
//     the search then skips that month's first days. Every candidate is
//     checked against the expression and a wrong one skipped, and days
//     29-31 get a go-quartz expression of their own, without days 1-28.
//   - After a fire time, a day-of-week list whose month jumps (August to
//     October) keeps the day of the month that the weekday step reached
//     (2 for September 2) when that day is valid (October 2), skipping
//     earlier days (October 1). go-quartz is asked from 30 seconds past a
//     minute, never a fire time, which takes the path that resets the day.
//   - Its parser does not range-check list values ("1,9" in day-of-week):
//     Parse checks every value itself.
package schedule
