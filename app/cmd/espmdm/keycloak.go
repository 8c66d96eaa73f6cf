package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/core/model"
)

func init() { subcommands = append(subcommands, newKeycloakCmd) }

// Environment variables holding the setup's own credentials.
const (
	setupPasswordEnv     = "KEYCLOAK_SETUP_PASSWORD"
	setupClientSecretEnv = "KEYCLOAK_SETUP_CLIENT_SECRET"
)

func newKeycloakCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keycloak",
		Short: "Prepare a Keycloak realm for espmdm",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newKeycloakSetupCmd())
	return cmd
}

type setupOptions struct {
	url, realm, adminRealm, adminUser, adminClientID string
	password, clientSecret                           string
	deviceAudience, graceText                        string
	grace                                            time.Duration
	consoleRedirects                                 []string
	asJSON                                           bool
}

func newKeycloakSetupCmd() *cobra.Command {
	var o setupOptions
	cmd := &cobra.Command{
		Use:   "setup --url KEYCLOAK_URL",
		Short: "Create or update the realm, roles, clients and rotation policy espmdm needs, idempotently",
		Long: "Create or update, over Keycloak's Admin REST API, what espmdm needs in a realm:\n" +
			"  - the realm (created when missing, enabled),\n" +
			"  - the realm roles " + keycloak.SetupDeviceRole + ", " + keycloak.SetupAdminRole + " and " + keycloak.SetupViewerRole + ",\n" +
			"  - the service-account client " + keycloak.SetupAdminClient + " (espmdm's KEYCLOAK_ADMIN_CLIENT_ID) with the\n" +
			"    realm-management roles " + strings.Join(keycloak.SetupAdminRoles, ", ") + ",\n" +
			"  - the service-account client " + keycloak.SetupOperatorClient + " holding " + keycloak.SetupAdminRole + " (for scripts),\n" +
			"  - with --console-url (or --console-redirect), the public PKCE client " + keycloak.SetupConsoleClient + " for the web console,\n" +
			"  - when Keycloak has the client-secret-rotation feature, the client profile and policy\n" +
			"    " + keycloak.SetupRotationName + " for grace-mode rotation, merged into the realm's existing ones.\n" +
			"Each change is printed; a second run changes nothing. At the end it prints the serve\n" +
			"environment (secrets included: keep the output safe).\n\n" +
			"It logs in to --admin-realm as --admin-user with the password in $" + setupPasswordEnv + "\n" +
			"(password grant of admin-cli), or, with --admin-client-id, as that service account with the\n" +
			"secret in $" + setupClientSecretEnv + ". The account needs to administer --realm (master's\n" +
			"admin role, or create-realm when the realm does not exist yet).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.password = os.Getenv(setupPasswordEnv)
			o.clientSecret = os.Getenv(setupClientSecretEnv)
			if err := o.check(); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			s, err := newRealmSetup(o)
			if err != nil {
				return err
			}
			defer s.Close()
			kr, err := s.Run(ctx)
			if err != nil {
				return o.explain(err)
			}
			o.result(kr).print(cmd.OutOrStdout(), o)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "Keycloak base URL (required), e.g. https://sso.example.com")
	f.StringVar(&o.realm, "realm", "iot", "realm of the device clients (KEYCLOAK_REALM)")
	f.StringVar(&o.adminRealm, "admin-realm", "master", "realm of the account that runs the setup")
	f.StringVar(&o.adminUser, "admin-user", "admin", "admin user (password in $"+setupPasswordEnv+")")
	f.StringVar(&o.adminClientID, "admin-client-id", "", "log in as this service-account client instead of a user (secret in $"+setupClientSecretEnv+")")
	f.StringVar(&o.deviceAudience, "device-audience", "espmdm-iot", "audience of device tokens (DEVICE_AUDIENCE)")
	f.StringVar(&o.graceText, "rotation-grace", "7d", "how long a rotated secret stays valid (ROTATION_GRACE; the profile's rotated-expiration-period)")
	f.Var(consoleURLFlag{&o.consoleRedirects}, "console-url", "public URL of espmdm (its BASE_URL) whose console logs in here: the redirect URIs are exactly URL/console/ and URL/api/docs (repeatable; creates "+keycloak.SetupConsoleClient+")")
	f.StringArrayVar(&o.consoleRedirects, "console-redirect", nil, "redirect URI of the web console, e.g. https://mdm.example.com/console/* (repeatable; creates "+keycloak.SetupConsoleClient+")")
	f.BoolVar(&o.asJSON, "json", false, "print the changes and the environment as JSON")
	return cmd
}

// check validates the options, before anything is sent.
func (o *setupOptions) check() error {
	o.url = strings.TrimRight(strings.TrimSpace(o.url), "/")
	if o.url == "" {
		return errors.New("--url is required: Keycloak's base URL, e.g. https://sso.example.com")
	}
	u, err := url.Parse(o.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
		return fmt.Errorf("--url %q: want an http(s) URL such as https://sso.example.com", redactURL(o.url))
	}
	for name, v := range map[string]string{"--realm": o.realm, "--admin-realm": o.adminRealm} {
		if strings.TrimSpace(v) == "" || strings.ContainsAny(v, "/?#%") {
			return fmt.Errorf("%s %q: want a realm name", name, v)
		}
	}
	if strings.TrimSpace(o.deviceAudience) == "" {
		return errors.New("--device-audience must not be empty")
	}
	if o.grace, err = app.ParseGrace(strings.TrimSpace(o.graceText)); err != nil {
		return fmt.Errorf("--rotation-grace %q: %w", o.graceText, err)
	}
	if o.grace >= keycloak.SetupSecretLifetime {
		return fmt.Errorf("--rotation-grace %q: must be shorter than the secrets' lifetime of %d s", o.graceText, keycloak.SetupSecretLifetime/time.Second)
	}
	for _, r := range o.consoleRedirects {
		if u, err := url.Parse(r); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--console-redirect %q: want an http(s) URL such as https://mdm.example.com/console/*", r)
		}
	}
	if o.adminClientID != "" {
		if o.clientSecret == "" {
			return fmt.Errorf("--admin-client-id %s: set its secret in $%s", o.adminClientID, setupClientSecretEnv)
		}
	} else if o.password == "" {
		return fmt.Errorf("set the password of %s (realm %s) in $%s, or use --admin-client-id with $%s",
			o.adminUser, o.adminRealm, setupPasswordEnv, setupClientSecretEnv)
	}
	return nil
}

// redactURL drops a URL's user information (never printed).
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		u.User = nil
		return u.String()
	}
	return raw
}

// newRealmSetup is the adapter's setup for the checked options.
func newRealmSetup(o setupOptions) (*keycloak.RealmSetup, error) {
	cfg := keycloak.SetupConfig{BaseURL: o.url, Realm: o.realm, AdminRealm: o.adminRealm, RotationGrace: o.grace,
		ConsoleRedirects: o.consoleRedirects}
	if o.adminClientID != "" {
		cfg.ClientID, cfg.ClientSecret = o.adminClientID, o.clientSecret
	} else {
		cfg.User, cfg.Password = o.adminUser, o.password
	}
	return keycloak.NewRealmSetup(cfg)
}

// explain words a failed setup for the command line: a failed login with
// the flags to check, a failed call without the adapter's "keycloak
// unavailable" (it names what the account may not do, or what failed).
func (o setupOptions) explain(err error) error {
	var le *keycloak.LoginError
	if errors.As(err, &le) {
		switch le.Failure {
		case keycloak.LoginUnreachable:
			return fmt.Errorf("cannot reach Keycloak at %s: %w; check --url", o.url, le.Err)
		case keycloak.LoginRealmNotFound:
			return fmt.Errorf("log in to Keycloak at %s: realm %s not found (HTTP 404); check --url and --admin-realm", o.url, o.adminRealm)
		case keycloak.LoginNotOIDC:
			return fmt.Errorf("log in to Keycloak at %s: HTTP %d and no OpenID Connect answer; is --url Keycloak's base URL?", o.url, le.Status)
		}
		how := fmt.Sprintf("check --admin-user and $%s", setupPasswordEnv)
		if o.adminClientID != "" {
			how = fmt.Sprintf("check --admin-client-id and $%s (the client needs service accounts enabled)", setupClientSecretEnv)
		}
		return fmt.Errorf("%w; %s", le, how)
	}
	var ue *model.UnavailableError
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// result is what the command prints for the adapter's result: the changes,
// the notes and the serve environment.
func (o setupOptions) result(kr keycloak.SetupResult) *setupResult {
	mode := "restore"
	if kr.RotationFeature {
		mode = "grace"
	}
	r := &setupResult{Changes: kr.Changes, Notes: kr.Notes, RotationFeature: kr.RotationFeature}
	r.setEnv("KEYCLOAK_URL", o.url)
	r.setEnv("KEYCLOAK_REALM", o.realm)
	r.setEnv("KEYCLOAK_ADMIN_CLIENT_ID", keycloak.SetupAdminClient)
	r.setEnv("KEYCLOAK_ADMIN_CLIENT_SECRET", kr.AdminClientSecret)
	r.setEnv("DEVICE_AUDIENCE", o.deviceAudience)
	r.setEnv("ROTATION_GRACE", strings.TrimSpace(o.graceText))
	r.setEnv("ROTATION_MODE", mode)
	r.setEnv("OPERATOR_CLIENT_ID", keycloak.SetupOperatorClient)
	r.setEnv("OPERATOR_CLIENT_SECRET", kr.OperatorClientSecret)
	if kr.PipelineClientSecret != "" {
		// Only when this run made the client: its secret is shown once.
		r.setEnv("PIPELINE_CLIENT_ID", keycloak.SetupPipelineClient)
		r.setEnv("PIPELINE_CLIENT_SECRET", kr.PipelineClientSecret)
	}
	return r
}

// setupResult is what a setup did and found.
type setupResult struct {
	Changes         []string          `json:"changes"`
	Notes           []string          `json:"notes"`
	RotationFeature bool              `json:"rotation_feature"`
	Env             map[string]string `json:"env"`
	envOrder        []string
}

func (r *setupResult) setEnv(k, v string) {
	if r.Env == nil {
		r.Env = map[string]string{}
	}
	r.Env[k] = v
	r.envOrder = append(r.envOrder, k)
}

func (r *setupResult) print(w io.Writer, o setupOptions) {
	if r.Changes == nil {
		r.Changes = []string{}
	}
	if r.Notes == nil {
		r.Notes = []string{}
	}
	if o.asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(r)
		return
	}
	if len(r.Changes) == 0 {
		fmt.Fprintf(w, "unchanged: realm %s is already set up for espmdm\n", o.realm)
	}
	for _, c := range r.Changes {
		fmt.Fprintln(w, c)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "note:", n)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "# espmdm serve environment (keep it secret)")
	for _, k := range r.envOrder {
		if k == "OPERATOR_CLIENT_ID" {
			fmt.Fprintln(w, "# operator service account for scripts (not read by serve; its tokens carry "+keycloak.SetupAdminRole+")")
		}
		if k == "PIPELINE_CLIENT_ID" {
			fmt.Fprintln(w, "# CI pipeline service account, created now: store its secret in your CI (it is not printed again; its tokens carry "+
				keycloak.SetupPipelineRole+")")
		}
		fmt.Fprintf(w, "%s=%s\n", k, r.Env[k])
	}
}
