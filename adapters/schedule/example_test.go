package schedule_test

import (
	"fmt"
	"time"

	"github.com/espmdm/espmdm/adapters/schedule"
)

func ExampleParse() {
	// SPEC §4's default rotation schedule: the first Saturday of the month
	// at 08:00, here in Berlin (CET, then CEST from March 29).
	c, err := schedule.Parse("0 8 * * 6#1", "Europe/Berlin")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Quartz())
	t := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for range 3 {
		if t, err = c.Next(t); err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(t.Format(time.RFC3339))
	}
	// Output:
	// 0 0 8 ? * 7#1
	// 2026-03-07T07:00:00Z
	// 2026-04-04T06:00:00Z
	// 2026-05-02T06:00:00Z
}

func ExampleParse_eitherDay() {
	// Both day fields restricted: every 13th and every Friday.
	c, err := schedule.Parse("0 0 13 * FRI", "")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Quartz())
	t := time.Date(2026, 3, 28, 0, 0, 0, 0, time.UTC)
	for range 4 {
		t, _ = c.Next(t)
		fmt.Println(t.Format("Mon 2006-01-02"))
	}
	// Output:
	// 0 0 0 13 * ? | 0 0 0 ? * 6
	// Fri 2026-04-03
	// Fri 2026-04-10
	// Mon 2026-04-13
	// Fri 2026-04-17
}

func ExampleParse_refused() {
	_, err := schedule.Parse("0 8 * * FRI-MON", "")
	fmt.Println(err)
	// Output:
	// day-of-week: "FRI-MON" runs backwards: Unix cron has no wrap-around ranges (go-quartz rejects them too); write 5-7,0-1
}
