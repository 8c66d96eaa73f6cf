package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/fx"

	"github.com/espmdm/espmdm/app"
)

func init() { subcommands = append(subcommands, newRotateOnceCmd) }

func newRotateOnceCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "rotate-once",
		Short: "Run one credential-rotation cycle (schedule, timeouts, free slots) and exit",
		Long: "Run one rotation cycle with the same environment as serve, for a Kubernetes CronJob:\n" +
			"fire ROTATION_CRON if a fire time has passed since the last one, time out attempts\n" +
			"older than ROTATION_TIMEOUT_SECONDS and start devices in free slots. It takes the\n" +
			"rotation lease that serve's worker holds; when another process holds it, it does\n" +
			"nothing and says so (exit 0). Devices started here finish through serve's /iot API.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := app.LoadConfig(os.Getenv)
			if err != nil {
				return err
			}
			var w *app.RotationWorker
			a := fx.New(app.Core(cfg), fx.Populate(&w), fx.StartTimeout(app.StartTimeout))
			if err := a.Err(); err != nil {
				return err
			}
			if err := a.Start(cmd.Context()); err != nil {
				return err
			}
			defer func() { _ = stopApp(a) }() // releases the lease
			rep, held, err := w.Once(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(map[string]any{
					"lease_held": held, "schedule_fired": rep.Fired, "queued": rep.Queued,
					"timed_out": rep.TimedOut, "started": rep.Started,
				})
			}
			if !held {
				fmt.Fprintln(out, "another espmdm process holds the rotation lease: nothing to do")
				return nil
			}
			fmt.Fprintf(out, "schedule fired: %t (queued %d)\ntimed out: %d\nstarted: %d\n", rep.Fired, rep.Queued, rep.TimedOut, rep.Started)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
