package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/ports"
)

func init() { subcommands = append(subcommands, newMigrateCmd, newReconcileCmd) }

func newMigrateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Apply the database migrations (DATABASE_URL) and exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dsn := strings.TrimSpace(os.Getenv("DATABASE_URL"))
			if dsn == "" {
				return errors.New("missing required environment variable DATABASE_URL")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			db, err := postgres.Open(ctx, dsn)
			if err != nil {
				return err
			}
			defer db.Close()
			if err := db.Migrate(ctx); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "migrations applied")
			return nil
		},
	}
}

func newReconcileCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "reconcile",
		Short: "Compare Keycloak device clients with devices, delete orphans, report devices without a client",
		Long: "Compare Keycloak's iotdevice-* clients with the device rows (same environment as serve):\n" +
			"clients without a device (older than the grace period) are deleted, devices whose\n" +
			"client is missing are reported (repair them with POST /api/devices/{id}/identity/sync).\n" +
			"Exits 1 when a deletion failed or a client is missing.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := app.LoadConfig(os.Getenv)
			if err != nil {
				return err
			}
			var reconciler ports.Reconciler
			var log *zap.Logger
			a := fx.New(app.Core(cfg), fx.Populate(&reconciler, &log), fx.StartTimeout(app.StartTimeout))
			if err := a.Err(); err != nil {
				return err
			}
			if err := a.Start(cmd.Context()); err != nil {
				return err
			}
			defer func() { _ = stopApp(a) }() // the report is the result
			rep, err := app.RunReconcile(cmd.Context(), reconciler, log)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				_ = enc.Encode(map[string][]string{
					"deleted_orphans": nonNil(rep.DeletedOrphans), "missing_clients": nonNil(rep.MissingClients), "failed": nonNil(rep.Failed),
					"accounts_made": nonNil(rep.AccountsMade), "accounts_repaired": nonNil(rep.AccountsRepaired),
					"accounts_deleted": nonNil(rep.AccountsDeleted), "accounts_failed": nonNil(rep.AccountsFailed),
				})
			} else {
				for _, l := range []struct {
					what string
					ids  []string
				}{
					{"deleted orphan clients", rep.DeletedOrphans},
					{"devices missing their client", rep.MissingClients},
					{"failed deletions", rep.Failed},
					{"broker accounts made", rep.AccountsMade},
					{"broker accounts repaired", rep.AccountsRepaired},
					{"orphan broker accounts deleted", rep.AccountsDeleted},
					{"broker accounts failed", rep.AccountsFailed},
				} {
					fmt.Fprintf(out, "%s: %d\n", l.what, len(l.ids))
					for _, c := range l.ids {
						fmt.Fprintln(out, "  -", c)
					}
				}
			}
			if len(rep.Failed)+len(rep.MissingClients)+len(rep.AccountsFailed) > 0 {
				return &exitError{code: 1, err: errors.New("reconcile found problems")}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
