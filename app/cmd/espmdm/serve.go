package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/fx"

	"github.com/espmdm/espmdm/app"
)

func init() { subcommands = append(subcommands, newServeCmd) }

func newServeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the espmdm server, configured from the environment",
		Long:  "Run the espmdm server. It reads its configuration from these environment variables:\n\n" + app.HelpText(),
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := app.LoadConfig(os.Getenv)
			if err != nil {
				return err
			}
			return runApp(cmd.Context(), app.New(cfg), nil)
		},
	}
}

// runApp starts a, calls ready (if set) once it serves, waits for ctx to
// end (SIGINT/SIGTERM) and stops a gracefully.
func runApp(ctx context.Context, a *fx.App, ready func() error) error {
	startCtx, cancel := context.WithTimeout(ctx, a.StartTimeout())
	err := a.Start(startCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	if ready != nil {
		if err := ready(); err != nil {
			_ = stopApp(a) // the readiness error is the one to report
			return err
		}
	}
	select {
	case <-ctx.Done():
	case sig := <-a.Done():
		_ = sig
	}
	return stopApp(a)
}

func stopApp(a *fx.App) error {
	stopCtx, cancel := context.WithTimeout(context.Background(), a.StopTimeout())
	defer cancel()
	if err := a.Stop(stopCtx); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}
