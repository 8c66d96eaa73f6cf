//go:build dev

// The dev command starts the integration harness (testcontainers-go, the
// Docker client, the testing package), so it is built only with the dev
// tag: make run builds bin/espmdm-dev with it, and the server binary
// (go build ./app/cmd/espmdm, the container image) links none of it.

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
)

func init() { subcommands = append(subcommands, newDevCmd) }

func newDevCmd() *cobra.Command {
	var envFile, launcher, dataDir, blobStore string
	var verbose bool
	var images integration.Images
	cmd := &cobra.Command{
		Use:   "dev [--env-file F] [--launcher auto|processes|containers] [--data-dir DIR] [--blob-store fs|s3]",
		Short: "Start PostgreSQL, Keycloak and Mosquitto locally and serve espmdm against them",
		Long: `Start PostgreSQL, Keycloak and Mosquitto on free loopback ports through the
integration harness, bootstrap the Keycloak realm, migrate and serve. The serve
environment is honoured (e.g. LOG_LEVEL, HTTP_ADDR, WIFI_SSID); what it does not
set comes from the stack. When ready, the URLs and the operator credentials are
written to the env file as KEY=value lines: ESPMDM_URL, OIDC_TOKEN_URL,
OIDC_ISSUER_URL, KEYCLOAK_URL, KEYCLOAK_REALM, MQTT_URL, DATABASE_URL,
OPERATOR_CLIENT_ID, OPERATOR_CLIENT_SECRET, PIPELINE_CLIENT_ID,
PIPELINE_CLIENT_SECRET (a CI pipeline's service account, holding only the
pipeline role), and for the web console CONSOLE_URL,
CONSOLE_USER, CONSOLE_PASSWORD (a realm user holding the admin role) and
CONSOLE_VIEWER_USER, CONSOLE_VIEWER_PASSWORD (one holding the viewer role; both
passwords are new each run). Runs until SIGINT/SIGTERM, then stops
everything it started and removes the env file.

Without --data-dir everything is thrown away at the stop. With --data-dir DIR
(processes launcher) the stack lives in DIR and the next run with the same DIR
comes back as it was: the database (models, devices, rotation state), the
Keycloak realm with its device clients, the firmware binaries, the ports (so
URLs given to devices keep working), and the secrets (SECRET_KEY, the operator
and admin clients'). Mosquitto keeps nothing (queued notifications are
espmdm's, in memory).

With --blob-store s3 the stack runs an S3-compatible server too (S3Proxy, a
Java process on a free loopback port, with the bucket espmdm) and espmdm keeps
firmware binaries there (BLOB_STORE=s3); the env file then also holds
S3_ENDPOINT, S3_REGION, S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY and
S3_FORCE_PATH_STYLE (what espmdm blobs migrate --to s3 needs, with
FIRMWARE_DIR). With --data-dir the bucket is kept too.

The containers launcher runs the official images (postgres, Keycloak with the
secret-rotation feature, eclipse-mosquitto) unless --postgres-image,
--keycloak-image, --mosquitto-image or ESPMDM_POSTGRES_IMAGE,
ESPMDM_KEYCLOAK_IMAGE, ESPMDM_MOSQUITTO_IMAGE name others (e.g. the local
stand-ins of make images).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if blobStore != "fs" && blobStore != "s3" {
				return errors.New("--blob-store must be fs or s3")
			}
			return runDev(cmd.Context(), cmd.ErrOrStderr(), envFile, launcher, dataDir, blobStore == "s3", verbose, images)
		},
	}
	cmd.Flags().StringVar(&envFile, "env-file", ".espmdm-dev.env", "file to write the stack's URLs and credentials to")
	def := os.Getenv("ESPMDM_LAUNCHER")
	if def == "" {
		def = "auto"
	}
	cmd.Flags().StringVar(&launcher, "launcher", def, "auto, processes or containers")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the services' own output")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "keep the stack's data, ports and secrets in this directory across runs")
	cmd.Flags().StringVar(&blobStore, "blob-store", "fs", "where espmdm keeps firmware: fs (a directory of the stack) or s3 (an S3Proxy bucket the stack runs)")
	cmd.Flags().StringVar(&images.Postgres, "postgres-image", "", "containers launcher: PostgreSQL image (default $"+integration.EnvPostgresImage+", else "+integration.DefaultPostgresImage+")")
	cmd.Flags().StringVar(&images.Keycloak, "keycloak-image", "", "containers launcher: Keycloak image (default $"+integration.EnvKeycloakImage+", else "+integration.KeycloakImageRepository+":"+integration.DefaultKeycloakVersion+")")
	cmd.Flags().StringVar(&images.Mosquitto, "mosquitto-image", "", "containers launcher: Mosquitto image (default $"+integration.EnvMosquittoImage+", else "+integration.DefaultMosquittoImage+")")
	return cmd
}

func runDev(ctx context.Context, stderr io.Writer, envFile, launcher, dataDir string, s3, verbose bool, images integration.Images) (err error) {
	began := time.Now()
	services := "PostgreSQL, Keycloak and Mosquitto"
	if s3 {
		services = "PostgreSQL, Keycloak, Mosquitto and S3Proxy"
	}
	fmt.Fprintf(stderr, "espmdm dev: starting %s (launcher %s)...\n", services, launcher)
	opts := integration.Options{Launcher: launcher, DataDir: dataDir, Images: images, S3: s3}
	if verbose {
		opts.Log = stderr
	}
	// The realm's secret-rotation profile keeps rotated secrets for the
	// grace the server is told, so that grace mode runs with it.
	if v := os.Getenv("ROTATION_GRACE"); v != "" {
		g, err := app.ParseGrace(v)
		if err != nil {
			return fmt.Errorf("invalid ROTATION_GRACE: %w", err)
		}
		opts.RotationGrace = g
	}
	st, err := integration.Start(ctx, opts)
	if err != nil {
		return fmt.Errorf("start the stack: %w", err)
	}
	defer func() {
		fmt.Fprintln(stderr, "espmdm dev: stopping the stack...")
		if serr := st.Stop(context.Background()); serr != nil && err == nil {
			err = serr
		}
	}()
	fmt.Fprintf(stderr, "espmdm dev: %s stack ready in %s\n", st.Launcher, time.Since(began).Round(100*time.Millisecond))

	env, err := devEnv(st, os.Getenv, dataDir)
	if err != nil {
		return err
	}
	cfg, err := app.LoadConfig(func(k string) string { return env[k] })
	if err != nil {
		return err
	}
	// The console's client learns this server's URL (the port is new each
	// run), and the console users get fresh passwords.
	setup, err := newRealmSetup(setupOptions{url: st.KeycloakURL, realm: st.Realm, adminRealm: "master",
		adminUser: st.KeycloakAdminUser, password: st.KeycloakAdminPassword})
	if err != nil {
		return err
	}
	con, err := setupConsole(ctx, setup, env["BASE_URL"])
	if err != nil {
		setup.Close()
		return fmt.Errorf("prepare the console's Keycloak client and users: %w", err)
	}
	// The CI pipeline's client: in the realm import, and made here for a
	// data directory whose realm predates it.
	pipe, err := setup.EnsurePipelineClient(ctx)
	setup.Close()
	if err != nil {
		return fmt.Errorf("prepare the pipeline's Keycloak client: %w", err)
	}
	ready := func() error {
		if err := waitReady(ctx, env["BASE_URL"]+"/health/ready", time.Minute); err != nil {
			return err
		}
		file := map[string]string{
			"ESPMDM_URL": env["BASE_URL"], "OIDC_TOKEN_URL": cfg.OIDCTokenURL, "OIDC_ISSUER_URL": cfg.OIDCIssuerURL,
			// What the server uses: the user's overrides, else the stack's.
			"KEYCLOAK_URL": cfg.KeycloakURL, "KEYCLOAK_REALM": cfg.KeycloakRealm, "MQTT_URL": cfg.MQTTURL,
			"DATABASE_URL": cfg.DatabaseURL, "OPERATOR_CLIENT_ID": st.OperatorClientID,
			"OPERATOR_CLIENT_SECRET": st.OperatorClientSecret, "VIEWER_CLIENT_ID": st.ViewerClientID,
			"VIEWER_CLIENT_SECRET": st.ViewerClientSecret, "KEYCLOAK_ADMIN_USER": st.KeycloakAdminUser,
			"KEYCLOAK_ADMIN_PASSWORD": st.KeycloakAdminPassword,
			"CONSOLE_URL":             con.URL, "CONSOLE_USER": con.User, "CONSOLE_PASSWORD": con.Password,
			"CONSOLE_VIEWER_USER": con.ViewerUser, "CONSOLE_VIEWER_PASSWORD": con.ViewerPassword,
			"PIPELINE_CLIENT_ID": keycloak.SetupPipelineClient, "PIPELINE_CLIENT_SECRET": pipe.Secret,
		}
		s3Line := ""
		if s3 {
			for k, v := range st.S3Env() {
				file[k] = v
			}
			s3Line = fmt.Sprintf("  s3        %s  (bucket %s, BLOB_STORE=s3)\n", st.S3Endpoint, st.S3Bucket)
		}
		if err := integration.WriteEnvFile(envFile, file); err != nil {
			return fmt.Errorf("write %s: %w", envFile, err)
		}
		fmt.Fprintf(stderr, "espmdm dev: ready in %s\n  console   %s  (user %s, password in %s)\n  espmdm    %s  (API docs %s/api/docs)\n  keycloak  %s  (console %s/admin/, user %s, password in %s)\n  mqtt      %s\n  postgres  %s\n%s  wrote %s; Ctrl-C stops everything\n",
			time.Since(began).Round(100*time.Millisecond), con.URL, con.User, envFile, env["BASE_URL"], env["BASE_URL"], st.KeycloakURL, st.KeycloakURL,
			st.KeycloakAdminUser, envFile, st.MQTTURL, st.DatabaseURL, s3Line, envFile)
		return nil
	}
	defer os.Remove(envFile)
	return runApp(ctx, app.New(cfg), ready)
}

// devEnv is the serve environment for the stack: every variable the user
// set wins, the rest comes from the stack or is made up for local use.
//
// With a data directory, SECRET_KEY and HTTP_ADDR are those of its first
// run (kept in DIR/espmdm.env), so sealed secrets still open and devices
// find the server where their partition says.
func devEnv(st *integration.Stack, getenv func(string) string, dataDir string) (map[string]string, error) {
	env := map[string]string{}
	for k, v := range st.Env() {
		env[k] = v
	}
	var kept map[string]string
	keptPath := ""
	if dataDir != "" {
		keptPath = filepath.Join(st.Dir(), "espmdm.env")
		var err error
		if kept, err = integration.ReadEnvFile(keptPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	if kept["SECRET_KEY"] != "" {
		env["SECRET_KEY"] = kept["SECRET_KEY"]
	} else {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		env["SECRET_KEY"] = hex.EncodeToString(key)
	}
	if kept["HTTP_ADDR"] != "" {
		env["HTTP_ADDR"] = kept["HTTP_ADDR"]
	}
	env["FIRMWARE_DIR"] = filepath.Join(st.Dir(), "firmware")
	if st.S3Endpoint != "" { // --blob-store s3: the stack's bucket (its S3_* are in st.Env)
		env["BLOB_STORE"] = "s3"
	}
	env["LOG_FORMAT"] = "console"
	env["MQTT_CLIENT_ID"] = "espmdm-dev"
	for _, v := range app.Vars {
		if val := getenv(v.Name); val != "" {
			env[v.Name] = val
		}
	}
	if env["HTTP_ADDR"] == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		env["HTTP_ADDR"] = ln.Addr().String()
		ln.Close()
	}
	if keptPath != "" && kept["SECRET_KEY"] == "" {
		if err := integration.WriteEnvFile(keptPath, map[string]string{"SECRET_KEY": env["SECRET_KEY"], "HTTP_ADDR": env["HTTP_ADDR"]}); err != nil {
			return nil, err
		}
	}
	if env["BASE_URL"] == "" {
		_, port, err := net.SplitHostPort(env["HTTP_ADDR"])
		if err != nil {
			return nil, fmt.Errorf("HTTP_ADDR: %w", err)
		}
		env["BASE_URL"] = "http://127.0.0.1:" + port
	}
	env["BASE_URL"] = strings.TrimRight(env["BASE_URL"], "/")
	return env, nil
}

func waitReady(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("espmdm did not become ready (GET " + url + ")")
		case <-time.After(200 * time.Millisecond):
		}
	}
}
