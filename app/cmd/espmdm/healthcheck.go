package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func init() { subcommands = append(subcommands, newHealthcheckCmd) }

// newHealthcheckCmd is the container health check: the image has no shell
// and no curl, so the binary asks its own server.
func newHealthcheckCmd() *cobra.Command {
	var target, path string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck [--url URL] [--path /health/ready]",
		Short: "Exit 0 when the espmdm server on this host answers its health check with 200",
		Long: `Ask a running espmdm server for its health (GET /health/ready by default) and exit 0
when it answers 200, else 1 with one line saying why. Without --url the server is
the one HTTP_ADDR (default :8080) names on this host, as in a container's
HEALTHCHECK.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u := target
			if u == "" {
				var err error
				if u, err = localURL(os.Getenv("HTTP_ADDR")); err != nil {
					return err
				}
			}
			u = strings.TrimRight(u, "/") + path
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("healthcheck: GET %s: %w", u, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("healthcheck: GET %s: %s", u, resp.Status)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "healthy: GET %s: %s\n", u, resp.Status)
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "url", "", "base URL of the server (default: http://127.0.0.1 at HTTP_ADDR's port)")
	cmd.Flags().StringVar(&path, "path", "/health/ready", "health endpoint (/health/ready or /health/live)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	return cmd
}

// localURL turns a listen address (":8080", "0.0.0.0:8080", "[::]:80",
// "127.0.0.1:9000") into the URL of that server from the same host.
func localURL(addr string) (string, error) {
	if addr == "" {
		addr = ":8080"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("healthcheck: HTTP_ADDR %q is not host:port", addr)
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}
