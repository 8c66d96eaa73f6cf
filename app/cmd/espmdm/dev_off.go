//go:build !dev

package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func init() { subcommands = append(subcommands, newDevCmd) }

// errNoDev is what `espmdm dev` says in the server binary, which does not
// link the integration harness the dev stack runs on.
var errNoDev = errors.New("this espmdm is the server build, without the dev stack: " +
	"make run builds and starts bin/espmdm-dev (go build -tags dev -o bin/espmdm-dev ./app/cmd/espmdm)")

func newDevCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "dev",
		Short:              "Not in this build: make run starts the dev stack (bin/espmdm-dev)",
		DisableFlagParsing: true,
		RunE:               func(*cobra.Command, []string) error { return errNoDev },
	}
}
