package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/adapters/s3store"
	"github.com/espmdm/espmdm/app"
)

func init() { subcommands = append(subcommands, newBlobsCmd) }

func newBlobsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "blobs",
		Short: "Work on the blob store (firmware binaries, ELFs, core dumps)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newBlobsMigrateCmd())
	return cmd
}

func newBlobsMigrateCmd() *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "migrate --to s3",
		Short: "Copy every blob of FIRMWARE_DIR into the S3 bucket, verifying each; safe to run again",
		Long: `Copy every blob of the directory FIRMWARE_DIR into the bucket of the S3_*
variables (S3_ENDPOINT, S3_REGION, S3_BUCKET, S3_PREFIX, S3_ACCESS_KEY_ID,
S3_SECRET_ACCESS_KEY, S3_FORCE_PATH_STYLE; see espmdm serve --help), under the
same names. Each blob is checked against its SHA-256 (its name) on the way: one
that does not match (rotted on disk) is named and not copied. What the bucket
holds already is skipped, so the command can run while espmdm serves from the
directory and be run again, e.g. after the replicas were restarted with
BLOB_STORE=s3, to copy what was uploaded in between.

Progress is one updated line on a terminal, one line per blob otherwise; the
summary goes to standard output. Exits 1 when a blob was not copied.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to != "s3" {
				return errors.New(`--to must be s3 (the only store blobs are migrated to)`)
			}
			cfg, err := app.LoadBlobConfig(os.Getenv)
			if err != nil {
				return err
			}
			stderr := cmd.ErrOrStderr()
			return migrateBlobs(cmd.Context(), cfg, cmd.OutOrStdout(), stderr, isTerminal(stderr))
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "the store to copy to: s3")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// migrateBlobs copies FIRMWARE_DIR's blobs to the bucket; tty says that
// stderr is a terminal, where the progress is one line rewritten in place.
func migrateBlobs(ctx context.Context, cfg app.Config, stdout, stderr io.Writer, tty bool) error {
	// fsstore.New would make a missing directory: a wrong FIRMWARE_DIR
	// must not look like an empty one.
	if fi, err := os.Stat(cfg.FirmwareDir); err != nil || !fi.IsDir() {
		return fmt.Errorf("FIRMWARE_DIR %s is not a directory: nothing to migrate from", cfg.FirmwareDir)
	}
	from, err := fsstore.New(cfg.FirmwareDir)
	if err != nil {
		return err
	}
	defer from.Close()
	checkCtx, cancel := context.WithTimeout(ctx, app.BlobStoreCheckTimeout)
	to, err := s3store.New(checkCtx, cfg.S3)
	cancel()
	if err != nil {
		return err
	}
	defer to.Close()

	where := fmt.Sprintf("bucket %q", cfg.S3.Bucket)
	if p := to.Prefix(); p != "" {
		where += fmt.Sprintf(" under %q", p)
	}
	fmt.Fprintf(stderr, "copying the blobs of %s to %s\n", cfg.FirmwareDir, where)
	began := time.Now()
	var last s3store.MigrateProgress
	res, err := s3store.Migrate(ctx, from, to, func(p s3store.MigrateProgress) {
		what := "already there"
		switch {
		case p.Err != nil:
			what = fmt.Sprintf("failed (%v)", p.Err)
		case p.Copied > last.Copied:
			what = fmt.Sprintf("copied (%d bytes)", p.Bytes-last.Bytes)
		}
		last = p
		if !tty {
			fmt.Fprintf(stderr, "[%d/%d] %s %s\n", p.Done, p.Total, p.Key, what)
			return
		}
		if p.Err != nil { // a failure keeps its own line
			fmt.Fprintf(stderr, "\r\033[K%s %s\n", p.Key, what)
		}
		fmt.Fprintf(stderr, "\r\033[K%d/%d blobs: %d copied (%s), %d already there, %d failed",
			p.Done, p.Total, p.Copied, megabytes(p.Bytes), p.Skipped, p.Failed)
	})
	if tty && last.Done > 0 {
		fmt.Fprintln(stderr) // end the progress line
	}
	took := time.Since(began).Round(100 * time.Millisecond)
	switch {
	case err != nil:
		fmt.Fprintf(stdout, "%d of %d blobs copied (%s), %d already in the %s, %d failed, in %s\n",
			res.Copied, res.Total, megabytes(res.Bytes), res.Skipped, where, res.Failed, took)
		return err
	case res.Total == 0:
		fmt.Fprintf(stdout, "nothing to copy: %s holds no blobs\n", cfg.FirmwareDir)
	case res.Copied == 0:
		fmt.Fprintf(stdout, "nothing to copy: all %d blobs are in the %s already\n", res.Total, where)
	default:
		fmt.Fprintf(stdout, "%d of %d blobs copied (%s), %d already in the %s, in %s\n",
			res.Copied, res.Total, megabytes(res.Bytes), res.Skipped, where, took)
	}
	return nil
}

// megabytes is n bytes in MB, one decimal.
func megabytes(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

// isTerminal reports whether w is a terminal (a character device), where
// progress is one line rewritten in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
