package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/espmdm/espmdm/app"
)

func init() { subcommands = append(subcommands, newKeycloakCmd) }

// Names the setup gives what it creates; they are espmdm's defaults
// (KEYCLOAK_ADMIN_CLIENT_ID, ADMIN_ROLE, VIEWER_ROLE, the device role) and
// those of the dev/test realm (integration/realm/iot-realm.json).
const (
	setupAdminClient    = "iotsupport-admin"
	setupOperatorClient = "espmdm-operator"
	setupConsoleClient  = "espmdm-console"
	setupRotationName   = "espmdm-secret-rotation"
	setupAdminRole      = "mdm-admin"
	setupViewerRole     = "mdm-viewer"
	setupDeviceRole     = "iotdevice"
	// setupExpiration is the profile's expiration-period: 5 years, as in
	// the dev/test realm (now + it must stay below 2^31).
	setupExpiration = 157680000
	// Environment variables holding the setup's own credentials.
	setupPasswordEnv     = "KEYCLOAK_SETUP_PASSWORD"
	setupClientSecretEnv = "KEYCLOAK_SETUP_CLIENT_SECRET"
	// secretMask is what Keycloak shows instead of a secret to a caller
	// without manage-clients.
	secretMask = "**********"
)

// setupAdminRoles are the realm-management roles of espmdm's service
// account: client management, and view-realm for the client policies.
var setupAdminRoles = []string{"manage-clients", "view-clients", "query-clients", "view-realm"}

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
			"  - the realm roles " + setupDeviceRole + ", " + setupAdminRole + " and " + setupViewerRole + ",\n" +
			"  - the service-account client " + setupAdminClient + " (espmdm's KEYCLOAK_ADMIN_CLIENT_ID) with the\n" +
			"    realm-management roles " + strings.Join(setupAdminRoles, ", ") + ",\n" +
			"  - the service-account client " + setupOperatorClient + " holding " + setupAdminRole + " (for scripts),\n" +
			"  - with --console-url (or --console-redirect), the public PKCE client " + setupConsoleClient + " for the web console,\n" +
			"  - when Keycloak has the client-secret-rotation feature, the client profile and policy\n" +
			"    " + setupRotationName + " for grace-mode rotation, merged into the realm's existing ones.\n" +
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
			s := newRealmSetup(o)
			res, err := s.run(ctx)
			if err != nil {
				return err
			}
			res.print(cmd.OutOrStdout(), o)
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
	f.Var(consoleURLFlag{&o.consoleRedirects}, "console-url", "public URL of espmdm (its BASE_URL) whose console logs in here: the redirect URIs are exactly URL/console/ and URL/api/docs (repeatable; creates "+setupConsoleClient+")")
	f.StringArrayVar(&o.consoleRedirects, "console-redirect", nil, "redirect URI of the web console, e.g. https://mdm.example.com/console/* (repeatable; creates "+setupConsoleClient+")")
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
	if o.grace >= setupExpiration*time.Second {
		return fmt.Errorf("--rotation-grace %q: must be shorter than the secrets' lifetime of %d s", o.graceText, setupExpiration)
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
			fmt.Fprintln(w, "# operator service account for scripts (not read by serve; its tokens carry "+setupAdminRole+")")
		}
		fmt.Fprintf(w, "%s=%s\n", k, r.Env[k])
	}
}

// realmSetup talks to Keycloak's Admin REST API with the setup account.
type realmSetup struct {
	o      setupOptions
	client *http.Client
	res    setupResult

	mu     sync.Mutex
	token  string
	expiry time.Time
}

func newRealmSetup(o setupOptions) *realmSetup {
	return &realmSetup{o: o, client: &http.Client{Timeout: 30 * time.Second}}
}

func (s *realmSetup) changed(format string, args ...any) {
	s.res.Changes = append(s.res.Changes, fmt.Sprintf(format, args...))
}

// callError describes a failed admin call, with what to do about it.
func (s *realmSetup) callError(op string, status int, body []byte) error {
	var kc struct {
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
		ErrorMessage     string `json:"errorMessage"`
	}
	_ = json.Unmarshal(body, &kc)
	msg := strings.TrimSpace(kc.ErrorMessage + " " + kc.ErrorDescription)
	if msg == "" {
		msg = kc.Error
	}
	detail := fmt.Sprintf("HTTP %d", status)
	if msg != "" && !strings.HasPrefix(msg, "HTTP ") {
		detail += ": " + oneLine(msg)
	}
	who := s.who()
	switch status {
	case http.StatusUnauthorized:
		return fmt.Errorf("%s: Keycloak refused the token of %s (%s); with Keycloak 26.8.2 or later a service account needs the kc-admin-api client scope", op, who, detail)
	case http.StatusForbidden:
		return fmt.Errorf("%s: %s may not do this (%s): give it master's admin role, or realm-management's realm-admin in realm %s", op, who, detail, s.o.realm)
	}
	return fmt.Errorf("%s: %s", op, detail)
}

func (s *realmSetup) who() string {
	if s.o.adminClientID != "" {
		return fmt.Sprintf("service account %s of realm %s", s.o.adminClientID, s.o.adminRealm)
	}
	return fmt.Sprintf("user %s of realm %s", s.o.adminUser, s.o.adminRealm)
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// login gets (or reuses) the setup account's access token. The master
// realm's tokens live 60 s by default, so it is refreshed before expiry.
func (s *realmSetup) login(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token != "" && time.Now().Before(s.expiry) {
		return s.token, nil
	}
	form := url.Values{}
	if s.o.adminClientID != "" {
		form.Set("grant_type", "client_credentials")
		form.Set("client_id", s.o.adminClientID)
		form.Set("client_secret", s.o.clientSecret)
	} else {
		form.Set("grant_type", "password")
		form.Set("client_id", "admin-cli")
		form.Set("username", s.o.adminUser)
		form.Set("password", s.o.password)
	}
	tokenURL := s.o.url + "/realms/" + url.PathEscape(s.o.adminRealm) + "/protocol/openid-connect/token"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("log in to Keycloak at %s: %w", s.o.url, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := s.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("cannot reach Keycloak at %s: %w; check --url", s.o.url, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var tok struct {
		AccessToken      string `json:"access_token"`
		ExpiresIn        int    `json:"expires_in"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	jsonErr := json.Unmarshal(body, &tok)
	switch {
	case resp.StatusCode == http.StatusOK && tok.AccessToken != "":
	case resp.StatusCode == http.StatusNotFound:
		return "", fmt.Errorf("log in to Keycloak at %s: realm %s not found (HTTP 404); check --url and --admin-realm", s.o.url, s.o.adminRealm)
	case jsonErr != nil:
		return "", fmt.Errorf("log in to Keycloak at %s: HTTP %d and no OpenID Connect answer; is --url Keycloak's base URL?", s.o.url, resp.StatusCode)
	default:
		how := fmt.Sprintf("check --admin-user and $%s", setupPasswordEnv)
		if s.o.adminClientID != "" {
			how = fmt.Sprintf("check --admin-client-id and $%s (the client needs service accounts enabled)", setupClientSecretEnv)
		}
		return "", fmt.Errorf("log in to Keycloak as %s: refused (HTTP %d %s: %s); %s",
			s.who(), resp.StatusCode, tok.Error, oneLine(tok.ErrorDescription), how)
	}
	life := time.Duration(tok.ExpiresIn) * time.Second
	if life <= 0 {
		life = 60 * time.Second
	}
	s.token = tok.AccessToken
	s.expiry = time.Now().Add(life * 2 / 3)
	return s.token, nil
}

// unwrapURLError drops the method and URL net/http puts in front.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// call sends an admin request (path below {url}/admin) and returns the
// status and body. Statuses other than 2xx and those in accept are errors.
func (s *realmSetup) call(ctx context.Context, op, method, path string, in any, accept ...int) (int, []byte, error) {
	token, err := s.login(ctx)
	if err != nil {
		return 0, nil, err
	}
	var r io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", op, err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.o.url+"/admin"+path, r)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: cannot reach Keycloak at %s: %w", op, s.o.url, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("%s: %w", op, err)
	}
	if resp.StatusCode/100 == 2 || slices.Contains(accept, resp.StatusCode) {
		return resp.StatusCode, body, nil
	}
	return resp.StatusCode, body, s.callError(op, resp.StatusCode, body)
}

// getJSON runs a GET and decodes its answer; found is false on 404.
func (s *realmSetup) getJSON(ctx context.Context, op, path string, v any) (found bool, err error) {
	status, body, err := s.call(ctx, op, http.MethodGet, path, nil, http.StatusNotFound)
	if err != nil {
		return false, err
	}
	if status == http.StatusNotFound {
		return false, nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return false, fmt.Errorf("%s: unexpected answer: %w", op, err)
	}
	return true, nil
}

func (s *realmSetup) realmPath(sub string) string {
	return "/realms/" + url.PathEscape(s.o.realm) + sub
}

// run does the whole setup.
func (s *realmSetup) run(ctx context.Context) (*setupResult, error) {
	feature, err := s.rotationFeature(ctx)
	if err != nil {
		return nil, err
	}
	s.res.RotationFeature = feature
	if err := s.ensureRealm(ctx); err != nil {
		return nil, err
	}
	for _, r := range []struct{ name, desc string }{
		{setupDeviceRole, "An espmdm device identity"},
		{setupAdminRole, "Full access to the espmdm admin API"},
		{setupViewerRole, "Read access to the espmdm admin API"},
	} {
		if err := s.ensureRealmRole(ctx, r.name, r.desc); err != nil {
			return nil, err
		}
	}
	adminUUID, err := s.ensureClient(ctx, serviceClient(setupAdminClient, "espmdm backend (manages device clients)"))
	if err != nil {
		return nil, err
	}
	if err := s.ensureAdminAPIScope(ctx, adminUUID, setupAdminClient); err != nil {
		return nil, err
	}
	if err := s.ensureManagementRoles(ctx, adminUUID, setupAdminClient, setupAdminRoles); err != nil {
		return nil, err
	}
	opUUID, err := s.ensureClient(ctx, serviceClient(setupOperatorClient, "espmdm operator (scripts; holds the admin role)"))
	if err != nil {
		return nil, err
	}
	if err := s.ensureRealmRoleMapping(ctx, opUUID, setupOperatorClient, setupAdminRole); err != nil {
		return nil, err
	}
	if len(s.o.consoleRedirects) > 0 {
		if _, err := s.ensureClient(ctx, consoleClient(s.o.consoleRedirects)); err != nil {
			return nil, err
		}
	}
	mode := "restore"
	if feature {
		if err := s.ensureRotationPolicy(ctx); err != nil {
			return nil, err
		}
		mode = "grace"
	} else {
		s.res.Notes = append(s.res.Notes, "Keycloak's client-secret-rotation feature is off: no secret-rotation policy was set up, "+
			"so espmdm will run in restore mode (a rotation replaces a device's secret at once). For grace mode, start Keycloak "+
			"with --features=client-secret-rotation and run this setup again.")
	}
	adminSecret, err := s.secret(ctx, adminUUID, setupAdminClient)
	if err != nil {
		return nil, err
	}
	opSecret, err := s.secret(ctx, opUUID, setupOperatorClient)
	if err != nil {
		return nil, err
	}
	r := &s.res
	r.setEnv("KEYCLOAK_URL", s.o.url)
	r.setEnv("KEYCLOAK_REALM", s.o.realm)
	r.setEnv("KEYCLOAK_ADMIN_CLIENT_ID", setupAdminClient)
	r.setEnv("KEYCLOAK_ADMIN_CLIENT_SECRET", adminSecret)
	r.setEnv("DEVICE_AUDIENCE", s.o.deviceAudience)
	r.setEnv("ROTATION_GRACE", strings.TrimSpace(s.o.graceText))
	r.setEnv("ROTATION_MODE", mode)
	r.setEnv("OPERATOR_CLIENT_ID", setupOperatorClient)
	r.setEnv("OPERATOR_CLIENT_SECRET", opSecret)
	return r, nil
}

// rotationFeature reads whether the server has client-secret-rotation.
// It is also the first call, so it checks the login.
func (s *realmSetup) rotationFeature(ctx context.Context) (bool, error) {
	var info struct {
		Features []struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		} `json:"features"`
		ProfileInfo struct {
			DisabledFeatures []string `json:"disabledFeatures"`
			PreviewFeatures  []string `json:"previewFeatures"`
		} `json:"profileInfo"`
	}
	if _, err := s.getJSON(ctx, "read Keycloak's server info", "/serverinfo", &info); err != nil {
		return false, err
	}
	for _, f := range info.Features {
		if f.Name == "CLIENT_SECRET_ROTATION" {
			return f.Enabled, nil
		}
	}
	return false, nil
}

func (s *realmSetup) ensureRealm(ctx context.Context) error {
	var realm map[string]any
	found, err := s.getJSON(ctx, "read realm "+s.o.realm, s.realmPath(""), &realm)
	if err != nil {
		return err
	}
	if !found {
		if _, _, err := s.call(ctx, "create realm "+s.o.realm, http.MethodPost, "/realms",
			map[string]any{"realm": s.o.realm, "enabled": true}); err != nil {
			return err
		}
		s.changed("created realm %s", s.o.realm)
		return nil
	}
	if realm["enabled"] != true {
		if _, _, err := s.call(ctx, "enable realm "+s.o.realm, http.MethodPut, s.realmPath(""),
			map[string]any{"realm": s.o.realm, "enabled": true}); err != nil {
			return err
		}
		s.changed("updated realm %s: enabled", s.o.realm)
	}
	return nil
}

type roleRep struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

func (s *realmSetup) ensureRealmRole(ctx context.Context, name, desc string) error {
	var role roleRep
	found, err := s.getJSON(ctx, "read realm role "+name, s.realmPath("/roles/"+url.PathEscape(name)), &role)
	if err != nil || found {
		return err
	}
	if _, _, err := s.call(ctx, "create realm role "+name, http.MethodPost, s.realmPath("/roles"),
		roleRep{Name: name, Description: desc}); err != nil {
		return err
	}
	s.changed("created realm role %s", name)
	return nil
}

// clientSpec is a client the setup keeps: settings that must hold, and
// list settings that must contain values (others there are kept).
type clientSpec struct {
	clientID string
	create   map[string]any // the create representation
	want     map[string]any // top-level settings that must equal
	attrs    map[string]string
	contain  map[string][]string // list settings that must contain these
}

// serviceClient is a confidential client with a service account and no
// browser or password flows (like the device clients, SPEC §1).
func serviceClient(clientID, name string) clientSpec {
	want := map[string]any{
		"enabled": true, "protocol": "openid-connect", "publicClient": false, "bearerOnly": false,
		"clientAuthenticatorType": "client-secret", "serviceAccountsEnabled": true,
		"standardFlowEnabled": false, "implicitFlowEnabled": false, "directAccessGrantsEnabled": false,
		"fullScopeAllowed": true,
	}
	create := map[string]any{"clientId": clientID, "name": name}
	for k, v := range want {
		create[k] = v
	}
	return clientSpec{clientID: clientID, create: create, want: want}
}

// consoleClient is the web console's public client: authorization code
// with PKCE (SPEC §11).
func consoleClient(redirects []string) clientSpec {
	want := map[string]any{
		"enabled": true, "protocol": "openid-connect", "publicClient": true, "bearerOnly": false,
		"standardFlowEnabled": true, "implicitFlowEnabled": false, "directAccessGrantsEnabled": false,
		"serviceAccountsEnabled": false, "fullScopeAllowed": true,
	}
	var origins []string
	for _, r := range redirects {
		u, _ := url.Parse(r)
		if o := u.Scheme + "://" + u.Host; !slices.Contains(origins, o) {
			origins = append(origins, o)
		}
	}
	attrs := map[string]string{"pkce.code.challenge.method": "S256", "post.logout.redirect.uris": "+"}
	create := map[string]any{"clientId": setupConsoleClient, "name": "espmdm console",
		"redirectUris": redirects, "webOrigins": origins, "attributes": attrs}
	for k, v := range want {
		create[k] = v
	}
	return clientSpec{clientID: setupConsoleClient, create: create, want: want, attrs: attrs,
		contain: map[string][]string{"redirectUris": redirects, "webOrigins": origins}}
}

// findClient returns the client's representation, nil when it does not
// exist.
func (s *realmSetup) findClient(ctx context.Context, clientID string) (map[string]any, error) {
	var list []map[string]any
	if _, err := s.getJSON(ctx, "look up client "+clientID,
		s.realmPath("/clients?"+url.Values{"clientId": {clientID}}.Encode()), &list); err != nil {
		return nil, err
	}
	for _, c := range list {
		if c["clientId"] == clientID {
			return c, nil
		}
	}
	return nil, nil
}

// ensureClient creates the client or corrects its settings, and returns
// its id.
func (s *realmSetup) ensureClient(ctx context.Context, spec clientSpec) (string, error) {
	c, err := s.findClient(ctx, spec.clientID)
	if err != nil {
		return "", err
	}
	if c == nil {
		status, body, err := s.call(ctx, "create client "+spec.clientID, http.MethodPost, s.realmPath("/clients"), spec.create, http.StatusConflict)
		if err != nil {
			return "", err
		}
		if status == http.StatusConflict {
			return "", s.callError("create client "+spec.clientID, status, body)
		}
		s.changed("created client %s", spec.clientID)
		if c, err = s.findClient(ctx, spec.clientID); err != nil {
			return "", err
		}
		if c == nil {
			return "", fmt.Errorf("create client %s: Keycloak does not list it after creating it", spec.clientID)
		}
		return fmt.Sprint(c["id"]), nil
	}
	id := fmt.Sprint(c["id"])
	var fixed []string
	for _, k := range sortedKeys(spec.want) {
		if v := spec.want[k]; !reflect.DeepEqual(c[k], v) && (v != false || c[k] != nil) {
			c[k] = v
			fixed = append(fixed, k)
		}
	}
	if len(spec.attrs) > 0 {
		attrs, _ := c["attributes"].(map[string]any)
		if attrs == nil {
			attrs = map[string]any{}
		}
		for _, k := range sortedKeys(spec.attrs) {
			if attrs[k] != spec.attrs[k] {
				attrs[k] = spec.attrs[k]
				fixed = append(fixed, k)
			}
		}
		c["attributes"] = attrs
	}
	for _, k := range sortedKeys(spec.contain) {
		have := stringList(c[k])
		missing := false
		for _, v := range spec.contain[k] {
			if !slices.Contains(have, v) {
				have = append(have, v)
				missing = true
			}
		}
		if missing {
			c[k] = have
			fixed = append(fixed, k)
		}
	}
	if len(fixed) == 0 {
		return id, nil
	}
	// The secret is left as it is (a masked one must never be stored).
	delete(c, "secret")
	if _, _, err := s.call(ctx, "update client "+spec.clientID, http.MethodPut, s.realmPath("/clients/"+url.PathEscape(id)), c); err != nil {
		return "", err
	}
	s.changed("updated client %s: %s", spec.clientID, strings.Join(fixed, ", "))
	return id, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func stringList(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// ensureAdminAPIScope gives espmdm's service account the kc-admin-api
// client scope when the realm has it (Keycloak 26.8.2 and later refuse
// admin tokens without its audience).
func (s *realmSetup) ensureAdminAPIScope(ctx context.Context, uuid, clientID string) error {
	const scope = "kc-admin-api"
	var scopes []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	if _, err := s.getJSON(ctx, "list client scopes", s.realmPath("/client-scopes"), &scopes); err != nil {
		return err
	}
	scopeID := ""
	for _, sc := range scopes {
		if sc.Name == scope {
			scopeID = sc.ID
		}
	}
	if scopeID == "" {
		return nil
	}
	var defaults []struct {
		Name string `json:"name"`
	}
	if _, err := s.getJSON(ctx, "list the default client scopes of "+clientID,
		s.realmPath("/clients/"+url.PathEscape(uuid)+"/default-client-scopes"), &defaults); err != nil {
		return err
	}
	for _, d := range defaults {
		if d.Name == scope {
			return nil
		}
	}
	if _, _, err := s.call(ctx, "add client scope "+scope+" to "+clientID, http.MethodPut,
		s.realmPath("/clients/"+url.PathEscape(uuid)+"/default-client-scopes/"+url.PathEscape(scopeID)), nil); err != nil {
		return err
	}
	s.changed("updated client %s: default client scope %s", clientID, scope)
	return nil
}

// serviceAccountUser returns the id and name of a client's service-account
// user.
func (s *realmSetup) serviceAccountUser(ctx context.Context, uuid, clientID string) (id, name string, err error) {
	var user struct {
		ID       string `json:"id"`
		Username string `json:"username"`
	}
	if _, err := s.getJSON(ctx, "read the service-account user of "+clientID,
		s.realmPath("/clients/"+url.PathEscape(uuid)+"/service-account-user"), &user); err != nil {
		return "", "", err
	}
	if user.ID == "" {
		return "", "", fmt.Errorf("read the service-account user of %s: Keycloak returned none", clientID)
	}
	return user.ID, user.Username, nil
}

// ensureManagementRoles maps realm-management client roles to a client's
// service account.
func (s *realmSetup) ensureManagementRoles(ctx context.Context, uuid, clientID string, roles []string) error {
	userID, username, err := s.serviceAccountUser(ctx, uuid, clientID)
	if err != nil {
		return err
	}
	rm, err := s.findClient(ctx, "realm-management")
	if err != nil {
		return err
	}
	if rm == nil {
		return fmt.Errorf("realm %s has no realm-management client", s.o.realm)
	}
	rmID := url.PathEscape(fmt.Sprint(rm["id"]))
	mappingPath := s.realmPath("/users/" + url.PathEscape(userID) + "/role-mappings/clients/" + rmID)
	var have []roleRep
	if _, err := s.getJSON(ctx, "read the roles of "+username, mappingPath, &have); err != nil {
		return err
	}
	var add []roleRep
	var names []string
	for _, name := range roles {
		if slices.ContainsFunc(have, func(r roleRep) bool { return r.Name == name }) {
			continue
		}
		var role roleRep
		found, err := s.getJSON(ctx, "read realm-management role "+name, s.realmPath("/clients/"+rmID+"/roles/"+url.PathEscape(name)), &role)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("realm %s: realm-management has no role %s", s.o.realm, name)
		}
		add = append(add, role)
		names = append(names, name)
	}
	if len(add) == 0 {
		return nil
	}
	if _, _, err := s.call(ctx, "grant realm-management roles to "+username, http.MethodPost, mappingPath, add); err != nil {
		return err
	}
	s.changed("granted %s the realm-management roles %s", username, strings.Join(names, ", "))
	return nil
}

// ensureRealmRoleMapping maps a realm role to a client's service account.
func (s *realmSetup) ensureRealmRoleMapping(ctx context.Context, uuid, clientID, roleName string) error {
	userID, username, err := s.serviceAccountUser(ctx, uuid, clientID)
	if err != nil {
		return err
	}
	mappingPath := s.realmPath("/users/" + url.PathEscape(userID) + "/role-mappings/realm")
	var have []roleRep
	if _, err := s.getJSON(ctx, "read the realm roles of "+username, mappingPath, &have); err != nil {
		return err
	}
	if slices.ContainsFunc(have, func(r roleRep) bool { return r.Name == roleName }) {
		return nil
	}
	var role roleRep
	if _, err := s.getJSON(ctx, "read realm role "+roleName, s.realmPath("/roles/"+url.PathEscape(roleName)), &role); err != nil {
		return err
	}
	if _, _, err := s.call(ctx, "grant realm role "+roleName+" to "+username, http.MethodPost, mappingPath, []roleRep{role}); err != nil {
		return err
	}
	s.changed("granted %s the realm role %s", username, roleName)
	return nil
}

// rotationProfile and rotationPolicy are the dev/test realm's.
func (s *realmSetup) rotationProfile() map[string]any {
	return map[string]any{
		"name": setupRotationName,
		"description": "espmdm grace-mode rotation: a generated secret keeps the old one valid as the rotated secret for " +
			"ROTATION_GRACE; the main secret outlives any rotation schedule; updates never rotate",
		"executors": []any{map[string]any{
			"executor": "secret-rotation",
			"configuration": map[string]any{
				"expiration-period":         strconv.Itoa(setupExpiration),
				"rotated-expiration-period": strconv.FormatInt(int64(s.o.grace/time.Second), 10),
				"remaining-rotation-period": "0",
			},
		}},
	}
}

func rotationPolicy() map[string]any {
	return map[string]any{
		"name":        setupRotationName,
		"description": "Covers the confidential clients, the espmdm device clients among them",
		"enabled":     true,
		"conditions": []any{map[string]any{
			"condition": "client-access-type", "configuration": map[string]any{"type": []any{"confidential"}},
		}},
		"profiles": []any{setupRotationName},
	}
}

// ensureRotationPolicy merges espmdm's profile and policy into the realm's
// own: ours is replaced by name or appended, the others are kept.
func (s *realmSetup) ensureRotationPolicy(ctx context.Context) error {
	if err := s.mergeClientPolicies(ctx, "client profile", "/client-policies/profiles", "profiles", s.rotationProfile(),
		[]string{"executors"}); err != nil {
		return err
	}
	return s.mergeClientPolicies(ctx, "client policy", "/client-policies/policies", "policies", rotationPolicy(),
		[]string{"enabled", "conditions", "profiles"})
}

func (s *realmSetup) mergeClientPolicies(ctx context.Context, what, path, key string, ours map[string]any, compare []string) error {
	var doc map[string]any
	if _, err := s.getJSON(ctx, "read the "+what+"s of realm "+s.o.realm, s.realmPath(path), &doc); err != nil {
		return err
	}
	if doc == nil {
		doc = map[string]any{}
	}
	list, _ := doc[key].([]any)
	// JSON round trip, so ours compares like what Keycloak returns.
	var want map[string]any
	b, _ := json.Marshal(ours)
	_ = json.Unmarshal(b, &want)
	verb, at := "created", -1
	for i, item := range list {
		m, _ := item.(map[string]any)
		if m == nil || m["name"] != want["name"] {
			continue
		}
		at, verb = i, "updated"
		same := true
		for _, k := range compare {
			if !reflect.DeepEqual(normalize(m[k]), normalize(want[k])) {
				same = false
			}
		}
		if same {
			return nil
		}
	}
	if at >= 0 {
		list[at] = want
	} else {
		list = append(list, want)
	}
	doc[key] = list
	for k := range doc {
		if k != key {
			delete(doc, k) // global ones are Keycloak's, not the realm's
		}
	}
	if _, _, err := s.call(ctx, "write the "+what+"s of realm "+s.o.realm, http.MethodPut, s.realmPath(path), doc); err != nil {
		return err
	}
	detail := ""
	if key == "profiles" {
		detail = fmt.Sprintf(" (secret-rotation: rotated-expiration-period %d s = %s)", int64(s.o.grace/time.Second), strings.TrimSpace(s.o.graceText))
	}
	s.changed("%s %s %s%s", verb, what, setupRotationName, detail)
	return nil
}

// normalize makes configuration values comparable: numbers and booleans
// as Keycloak may return them as strings.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	case nil:
		return nil
	}
	return v
}

// secret reads a client's secret back from Keycloak.
func (s *realmSetup) secret(ctx context.Context, uuid, clientID string) (string, error) {
	var sec struct {
		Value string `json:"value"`
	}
	if _, err := s.getJSON(ctx, "read the secret of "+clientID, s.realmPath("/clients/"+url.PathEscape(uuid)+"/client-secret"), &sec); err != nil {
		return "", err
	}
	switch sec.Value {
	case "":
		return "", fmt.Errorf("read the secret of %s: Keycloak returned none", clientID)
	case secretMask:
		return "", fmt.Errorf("read the secret of %s: Keycloak masks it: %s needs realm-management's manage-clients in realm %s", clientID, s.who(), s.o.realm)
	}
	return sec.Value, nil
}
