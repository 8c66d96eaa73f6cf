package main

import (
	"bufio"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/adapters/schedule"
	"github.com/espmdm/espmdm/core/model"
)

func init() { subcommands = append(subcommands, newScheduleCmd) }

// maxScheduleCount bounds --count of `espmdm schedule next`.
const maxScheduleCount = 10000

func newScheduleCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "Check cron schedules such as ROTATION_CRON",
	}
	cmd.AddCommand(newScheduleNextCmd())
	return cmd
}

func newScheduleNextCmd() *cobra.Command {
	var (
		expr, tz, from string
		count          int
	)
	cmd := &cobra.Command{
		Use:   "next --cron EXPR [--tz ZONE] [--from RFC3339] [--count N]",
		Short: "Print the next fire times of a cron schedule",
		Long: `Prints the next N fire times of a 5-field Unix cron expression, as
ROTATION_CRON and ROTATION_TZ would fire, in RFC 3339 UTC, one per line,
strictly after --from (default: now).

The expression is minute hour day-of-month month day-of-week, with numbers,
names (JAN-DEC, SUN-SAT), ranges, lists, steps (*/15, 1-30/5, 5/10), L (the
last day of the month), nL (the last weekday n: 5L) and n#k (the k-th weekday
n, k 1-4: 6#1 is the first Saturday); 0 and 7 are Sunday. When both day
fields are restricted (neither begins with *), a day matches when either
does. An expression go-quartz cannot compute exactly is refused, naming the
field and why.

Across DST changes, a wall-clock time skipped by the change fires as if the
clock had not moved (02:30 fires at 03:30 new time); a repeated one fires
once, at its first occurrence.

Invalid input exits with status 2.`,
		Example: `  espmdm schedule next --cron '0 8 * * 6#1'
  espmdm schedule next --cron '0 8 * * 6#1' --tz Europe/Berlin --from 2026-12-01T00:00:00Z --count 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("cron") {
				return usageError("--cron is required, e.g. --cron '0 8 * * 6#1'")
			}
			if count < 1 || count > maxScheduleCount {
				return usageError("--count must be 1 to %d, not %d", maxScheduleCount, count)
			}
			after := time.Now()
			if cmd.Flags().Changed("from") {
				t, err := time.Parse(time.RFC3339, from)
				if err != nil {
					return usageError("--from %q is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)", from)
				}
				after = t
			}
			c, err := schedule.Parse(expr, tz)
			if err != nil {
				flag := "--cron"
				var ve *model.ValidationError
				if errors.As(err, &ve) && ve.Field == schedule.FieldTimeZone {
					flag = "--tz"
				}
				return usageError("invalid %s: %w", flag, err)
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			defer w.Flush()
			for range count {
				next, err := c.Next(after)
				if err != nil {
					return err
				}
				fmt.Fprintln(w, next.Format(time.RFC3339))
				after = next
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&expr, "cron", "", "5-field Unix cron expression (required)")
	cmd.Flags().StringVar(&tz, "tz", "UTC", "IANA time zone of the expression")
	cmd.Flags().StringVar(&from, "from", "", "print fire times strictly after this RFC 3339 time (default now)")
	cmd.Flags().IntVar(&count, "count", 5, "how many fire times to print")
	return cmd
}
