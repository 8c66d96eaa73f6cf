// Command withstack starts the integration stack (PostgreSQL, Keycloak,
// Mosquitto; with -s3 also S3Proxy, an S3-compatible server), runs a command with $ESPMDM_STACK_ENV naming the stack's env
// file, and stops the stack when the command ends or on SIGINT/SIGTERM. It
// is how `make test` gives every test package one shared stack:
//
//	go run ./integration/cmd/withstack -- go test ./...
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/espmdm/espmdm/integration"
)

func main() { os.Exit(run()) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run() int {
	launcher := flag.String("launcher", os.Getenv("ESPMDM_LAUNCHER"), "auto, processes or containers")
	verbose := flag.Bool("v", os.Getenv("ESPMDM_STACK_LOG") == "1", "print the services' output")
	var images integration.Images
	flag.StringVar(&images.Postgres, "postgres-image", "", "containers launcher: PostgreSQL image (default $"+integration.EnvPostgresImage+", else "+integration.DefaultPostgresImage+")")
	flag.StringVar(&images.Keycloak, "keycloak-image", "", "containers launcher: Keycloak image (default $"+integration.EnvKeycloakImage+", else "+integration.KeycloakImageRepository+":VERSION)")
	flag.StringVar(&images.Mosquitto, "mosquitto-image", "", "containers launcher: Mosquitto image (default $"+integration.EnvMosquittoImage+", else "+integration.DefaultMosquittoImage+")")
	withS3 := flag.Bool("s3", os.Getenv(integration.EnvStackS3) == "1", "also run the S3-compatible server (S3Proxy) with a bucket (default $"+integration.EnvStackS3+"=1)")
	prepare := flag.Bool("prepare", false, "only fetch Keycloak's distribution and S3Proxy into the cache, then exit")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: withstack [-launcher auto|processes|containers] [-s3] [-postgres-image I] [-keycloak-image I] [-mosquitto-image I] [-v] -- COMMAND [ARGS...]\n       withstack -prepare")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *prepare {
		dist, err := integration.EnsureKeycloak(context.Background(), integration.DefaultCacheDir(),
			envOr("ESPMDM_KEYCLOAK_VERSION", integration.DefaultKeycloakVersion), os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "withstack:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "withstack: Keycloak distribution ready in", dist)
		jar, err := integration.EnsureS3Proxy(context.Background(), integration.DefaultCacheDir(),
			envOr("ESPMDM_S3PROXY_VERSION", integration.DefaultS3ProxyVersion), os.Stderr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "withstack:", err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "withstack: S3Proxy ready in", jar)
		return 0
	}
	if flag.NArg() == 0 {
		flag.Usage()
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := integration.Options{Launcher: *launcher, Images: images, S3: *withS3}
	if *verbose {
		opts.Log = os.Stderr
	}
	began := time.Now()
	st, err := integration.Start(ctx, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "withstack:", err)
		return 1
	}
	defer func() {
		if err := st.Stop(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "withstack: stop:", err)
		}
	}()
	s3 := ""
	if st.S3Endpoint != "" {
		s3 = fmt.Sprintf(", s3 %s bucket %s", st.S3Endpoint, st.S3Bucket)
	}
	fmt.Fprintf(os.Stderr, "withstack: %s stack ready in %s (postgres %s, keycloak %s, mqtt %s%s)\n",
		st.Launcher, time.Since(began).Round(100*time.Millisecond), st.DatabaseURL, st.KeycloakURL, st.MQTTURL, s3)

	if _, err := st.ServeControl(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "withstack:", err)
		return 1
	}
	envFile := filepath.Join(st.Dir(), "stack.env")
	if err := integration.WriteEnvFile(envFile, st.Env()); err != nil {
		fmt.Fprintln(os.Stderr, "withstack:", err)
		return 1
	}
	cmd := exec.Command(flag.Arg(0), flag.Args()[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), integration.EnvStackFile+"="+envFile)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "withstack:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		err = <-done
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		if exit.ExitCode() < 0 {
			return 1
		}
		return exit.ExitCode()
	default:
		fmt.Fprintln(os.Stderr, "withstack:", err)
		return 1
	}
}
