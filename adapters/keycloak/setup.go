package keycloak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Names RealmSetup gives what it makes. They are espmdm's defaults
// (KEYCLOAK_ADMIN_CLIENT_ID, ADMIN_ROLE, VIEWER_ROLE, the device role) and
// those of the dev/test realm (integration/realm/iot-realm.json).
const (
	SetupAdminClient    = "iotsupport-admin"
	SetupOperatorClient = "espmdm-operator"
	SetupPipelineClient = "espmdm-pipeline"
	SetupConsoleClient  = "espmdm-console"
	SetupRotationName   = "espmdm-secret-rotation"
	SetupAdminRole      = "mdm-admin"
	SetupViewerRole     = "mdm-viewer"
	SetupPipelineRole   = "mdm-pipeline"
	SetupDeviceRole     = "iotdevice"
	// SetupSecretLifetime is the rotation profile's expiration-period: 5
	// years, as in the dev/test realm (now plus it must stay below 2^31
	// epoch seconds).
	SetupSecretLifetime = 157680000 * time.Second
)

// SetupAdminRoles are the realm-management roles RealmSetup grants the
// service account of SetupAdminClient: client management, and view-realm
// for the client policies (Admin.RotationPolicy).
var SetupAdminRoles = []string{"manage-clients", "view-clients", "query-clients", "view-realm"}

// SetupConfig configures a RealmSetup.
type SetupConfig struct {
	// BaseURL is Keycloak's root URL, e.g. https://sso.example.com.
	BaseURL string
	// Realm is the realm to set up; Run creates it when it is missing.
	Realm string
	// AdminRealm is the realm of the account that runs the setup; default
	// master.
	AdminRealm string
	// User and Password log in with the password grant of admin-cli. When
	// ClientID is set, the setup logs in as that service-account client
	// with ClientSecret (client credentials) instead.
	User, Password         string
	ClientID, ClientSecret string
	// RotationGrace is the rotation profile's rotated-expiration-period:
	// how long a rotated secret stays valid. Whole seconds, shorter than
	// SetupSecretLifetime; default 7 days (espmdm's ROTATION_GRACE).
	RotationGrace time.Duration
	// ConsoleRedirects, when set, are the redirect URIs of the web
	// console's client, which Run then makes (see EnsureConsoleClient).
	ConsoleRedirects []string
	// Timeout bounds each HTTP request (and each token fetch); default 30s.
	Timeout time.Duration
}

// SetupResult is what Run did and found.
type SetupResult struct {
	// Changes lists what was created or corrected, one line each; empty
	// when the realm was set up already.
	Changes []string
	// Notes are advice, such as the rotation feature being off.
	Notes []string
	// RotationFeature tells whether Keycloak has client-secret-rotation
	// (and so whether the rotation profile and policy were set up).
	RotationFeature bool
	// AdminClientSecret and OperatorClientSecret are the secrets of
	// SetupAdminClient and SetupOperatorClient, read back from Keycloak.
	AdminClientSecret, OperatorClientSecret string
	// PipelineClientSecret is the secret of SetupPipelineClient when this
	// run created it, else empty: a pipeline's secret is printed once,
	// when it is made, and lives in the CI's secret store from then on.
	PipelineClientSecret string
}

// RealmSetup prepares a realm for espmdm over Keycloak's Admin REST API,
// idempotently: each step reads what is there and changes only what
// differs, and Changes lists what it changed. It is not safe for
// concurrent use.
type RealmSetup struct {
	transport
	cfg      SetupConfig
	adminURL string // {BaseURL}/admin
	realmURL string // {BaseURL}/admin/realms/{realm}
	changes  []string
}

// NewRealmSetup checks cfg and returns a RealmSetup. It does not contact
// Keycloak.
func NewRealmSetup(cfg SetupConfig) (*RealmSetup, error) {
	base, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	if cfg.AdminRealm == "" {
		cfg.AdminRealm = "master"
	}
	if cfg.RotationGrace == 0 {
		cfg.RotationGrace = 7 * 24 * time.Hour
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	switch {
	case cfg.Realm == "":
		return nil, errors.New("keycloak: the realm is required")
	case cfg.ClientID != "" && cfg.ClientSecret == "":
		return nil, errors.New("keycloak: the setup client's secret is required")
	case cfg.ClientID == "" && (cfg.User == "" || cfg.Password == ""):
		return nil, errors.New("keycloak: the setup user and password, or a client id and secret, are required")
	case cfg.Timeout < 0:
		return nil, errors.New("keycloak: the timeout must not be negative")
	case cfg.RotationGrace < 0 || cfg.RotationGrace%time.Second != 0 || cfg.RotationGrace >= SetupSecretLifetime:
		return nil, fmt.Errorf("keycloak: the rotation grace must be whole seconds, positive and shorter than %d s", SetupSecretLifetime/time.Second)
	}
	if err := checkRedirects(cfg.ConsoleRedirects); err != nil {
		return nil, err
	}
	tokenURL := base + "/realms/" + url.PathEscape(cfg.AdminRealm) + "/protocol/openid-connect/token"
	var fetch tokenSource
	if cfg.ClientID != "" {
		cc := &clientcredentials.Config{ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, TokenURL: tokenURL,
			AuthStyle: oauth2.AuthStyleInParams}
		fetch = cc.Token
	} else {
		pc := &oauth2.Config{ClientID: "admin-cli", Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: oauth2.AuthStyleInParams}}
		fetch = func(ctx context.Context) (*oauth2.Token, error) {
			return pc.PasswordCredentialsToken(ctx, cfg.User, cfg.Password)
		}
	}
	s := &RealmSetup{
		// One request at a time: the setup's steps run in order.
		transport: newTransport(nil, fetch, 1, cfg.Timeout, 2, 200*time.Millisecond),
		cfg:       cfg,
		adminURL:  base + "/admin",
		realmURL:  base + "/admin/realms/" + url.PathEscape(cfg.Realm),
	}
	s.base = s.adminURL
	s.loginFailed = s.loginError
	s.refused = s.refusal
	return s, nil
}

// Close closes the idle connections of the setup's HTTP client.
func (s *RealmSetup) Close() { s.close() }

// Changes lists what the setup has changed so far, one line each.
func (s *RealmSetup) Changes() []string { return slices.Clone(s.changes) }

func (s *RealmSetup) changed(format string, args ...any) {
	s.changes = append(s.changes, fmt.Sprintf(format, args...))
}

// who names the account that runs the setup, for messages.
func (s *RealmSetup) who() string {
	if s.cfg.ClientID != "" {
		return fmt.Sprintf("service account %s of realm %s", s.cfg.ClientID, s.cfg.AdminRealm)
	}
	return fmt.Sprintf("user %s of realm %s", s.cfg.User, s.cfg.AdminRealm)
}

// refusal advises on a 401 or 403 of the admin API to the setup account.
func (s *RealmSetup) refusal(code int, _ request) string {
	if code == http.StatusUnauthorized {
		return "Keycloak refused the token of " + s.who() + "; with Keycloak 26.8.2 or later a service account needs the kc-admin-api client scope"
	}
	return s.who() + " may not do this: give it master's admin role, or realm-management's realm-admin in realm " + s.cfg.Realm
}

// LoginFailure is why a RealmSetup's account could not log in.
type LoginFailure int

const (
	// LoginUnreachable: no answer from Keycloak (network error, timeout).
	LoginUnreachable LoginFailure = iota + 1
	// LoginRealmNotFound: the token endpoint answered 404, no such realm.
	LoginRealmNotFound
	// LoginNotOIDC: the answer was no OpenID Connect one, so the base URL is
	// probably not Keycloak's.
	LoginNotOIDC
	// LoginRefused: the token endpoint refused the credentials.
	LoginRefused
)

// LoginError is a failed login of a RealmSetup's account at the token
// endpoint of its admin realm. It never carries the password or secret.
type LoginError struct {
	Failure LoginFailure
	// Account names the account, e.g. "user admin of realm master".
	Account string
	// Realm is the admin realm.
	Realm string
	// Status is the token endpoint's HTTP status; 0 when unreachable.
	Status int
	// Code and Description are the OAuth error of a refusal (one line each).
	Code, Description string
	// Err is why Keycloak could not be reached.
	Err error
}

func (e *LoginError) Error() string {
	switch e.Failure {
	case LoginUnreachable:
		return "log in to Keycloak: cannot reach it: " + e.Err.Error()
	case LoginRealmNotFound:
		return "log in to Keycloak: realm " + e.Realm + " not found (HTTP 404)"
	case LoginNotOIDC:
		return fmt.Sprintf("log in to Keycloak: HTTP %d and no OpenID Connect answer", e.Status)
	}
	return fmt.Sprintf("log in to Keycloak as %s: refused (HTTP %d %s: %s)", e.Account, e.Status, e.Code, e.Description)
}

func (e *LoginError) Unwrap() error { return e.Err }

// loginError describes a failed token fetch of the setup account.
func (s *RealmSetup) loginError(err error) *failure {
	le := &LoginError{Account: s.who(), Realm: s.cfg.AdminRealm}
	var re *oauth2.RetrieveError
	var ue *url.Error
	switch {
	case errors.As(err, &re) && re.Response != nil:
		le.Status = re.Response.StatusCode
		switch {
		case le.Status == http.StatusNotFound:
			le.Failure = LoginRealmNotFound
		case !json.Valid(re.Body):
			le.Failure = LoginNotOIDC
		default:
			le.Failure, le.Code, le.Description = LoginRefused, oneLine(re.ErrorCode), oneLine(re.ErrorDescription)
		}
	case errors.As(err, &ue):
		le.Failure, le.Err = LoginUnreachable, ue.Err // url.Error repeats method and URL
	case errors.Is(err, errTokenTimeout):
		le.Failure, le.Err = LoginUnreachable, err
	default:
		// A 2xx answer without an access token: oauth2 says no more.
		le.Failure, le.Status = LoginNotOIDC, http.StatusOK
	}
	return &failure{err: le, transient: le.Failure == LoginUnreachable || le.Status >= 500, notSent: true}
}

// get GETs u into v; found is false on 404.
func (s *RealmSetup) get(ctx context.Context, op, u string, v any) (found bool, err error) {
	req := request{op: op, method: http.MethodGet, url: u, auth: true, sensitive: true, accept: []int{http.StatusNotFound}}
	resp, err := s.do(ctx, req)
	if err != nil {
		return false, err
	}
	if resp.status == http.StatusNotFound {
		return false, nil
	}
	return true, resp.decode(req, v)
}

// send sends a change; sensitive when body carries a secret or password.
func (s *RealmSetup) send(ctx context.Context, op, method, u string, body any, sensitive bool) error {
	_, err := s.do(ctx, request{op: op, method: method, url: u, body: body, auth: true, sensitive: sensitive})
	return err
}

// Run does the whole setup: the realm (created when missing, enabled); the
// realm roles SetupDeviceRole, SetupAdminRole and SetupViewerRole; the
// service-account client SetupAdminClient with SetupAdminRoles (and the
// kc-admin-api client scope where the realm has it); the service-account
// client SetupOperatorClient holding SetupAdminRole; with ConsoleRedirects,
// the console's client; and, when Keycloak has the client-secret-rotation
// feature, the client profile and policy SetupRotationName merged into the
// realm's own. It reads the two clients' secrets back.
func (s *RealmSetup) Run(ctx context.Context) (SetupResult, error) {
	var res SetupResult
	feature, err := s.rotationFeature(ctx)
	if err != nil {
		return res, err
	}
	res.RotationFeature = feature
	if err := s.ensureRealm(ctx); err != nil {
		return res, err
	}
	for _, r := range []struct{ name, desc string }{
		{SetupDeviceRole, "An espmdm device identity"},
		{SetupAdminRole, "Full access to the espmdm admin API"},
		{SetupViewerRole, "Read access to the espmdm admin API"},
		{SetupPipelineRole, "CI pipelines: firmware upload by model code only"},
	} {
		if err := s.ensureRealmRole(ctx, r.name, r.desc); err != nil {
			return res, err
		}
	}
	adminUUID, err := s.ensureClient(ctx, serviceClient(SetupAdminClient, "espmdm backend (manages device clients)"))
	if err != nil {
		return res, err
	}
	if err := s.ensureAdminAPIScope(ctx, adminUUID, SetupAdminClient); err != nil {
		return res, err
	}
	if err := s.ensureManagementRoles(ctx, adminUUID, SetupAdminClient, SetupAdminRoles); err != nil {
		return res, err
	}
	opUUID, err := s.ensureClient(ctx, serviceClient(SetupOperatorClient, "espmdm operator (scripts; holds the admin role)"))
	if err != nil {
		return res, err
	}
	if err := s.ensureRealmRoleMapping(ctx, opUUID, SetupOperatorClient, SetupAdminRole); err != nil {
		return res, err
	}
	pipe, err := s.EnsurePipelineClient(ctx)
	if err != nil {
		return res, err
	}
	if pipe.Created {
		res.PipelineClientSecret = pipe.Secret
	}
	if len(s.cfg.ConsoleRedirects) > 0 {
		if err := s.EnsureConsoleClient(ctx, s.cfg.ConsoleRedirects); err != nil {
			return res, err
		}
	}
	if feature {
		if err := s.ensureRotationPolicy(ctx); err != nil {
			return res, err
		}
	} else {
		res.Notes = append(res.Notes, "Keycloak's client-secret-rotation feature is off: no secret-rotation policy was set up, "+
			"so espmdm will run in restore mode (a rotation replaces a device's secret at once). For grace mode, start Keycloak "+
			"with --features=client-secret-rotation and run this setup again.")
	}
	if res.AdminClientSecret, err = s.secret(ctx, adminUUID, SetupAdminClient); err != nil {
		return res, err
	}
	if res.OperatorClientSecret, err = s.secret(ctx, opUUID, SetupOperatorClient); err != nil {
		return res, err
	}
	res.Changes = s.Changes()
	return res, nil
}

// PipelineClient is what EnsurePipelineClient found or made.
type PipelineClient struct {
	// Created tells whether this call created the client.
	Created bool
	// Secret is its secret, read back from Keycloak.
	Secret string
}

// EnsurePipelineClient creates (or corrects) the service-account client
// SetupPipelineClient holding the realm role SetupPipelineRole (created
// when missing), for CI pipelines (SPEC §18), and reads its secret back.
func (s *RealmSetup) EnsurePipelineClient(ctx context.Context) (PipelineClient, error) {
	var out PipelineClient
	if err := s.ensureRealmRole(ctx, SetupPipelineRole, "CI pipelines: firmware upload by model code only"); err != nil {
		return out, err
	}
	c, err := s.findClient(ctx, SetupPipelineClient)
	if err != nil {
		return out, err
	}
	out.Created = c == nil
	uuid, err := s.ensureClient(ctx, serviceClient(SetupPipelineClient, "espmdm CI pipeline (holds the pipeline role: firmware upload only)"))
	if err != nil {
		return out, err
	}
	if err := s.ensureRealmRoleMapping(ctx, uuid, SetupPipelineClient, SetupPipelineRole); err != nil {
		return out, err
	}
	if out.Secret, err = s.secret(ctx, uuid, SetupPipelineClient); err != nil {
		return out, err
	}
	return out, nil
}

// rotationFeature reads whether the server has client-secret-rotation (a
// feature it does not list counts as off). It is also the first call, so
// it checks the login; unlike Admin's, a refused serverinfo is an error.
func (s *RealmSetup) rotationFeature(ctx context.Context) (bool, error) {
	var info serverInfoRep
	if _, err := s.get(ctx, "read Keycloak's server info", s.adminURL+"/serverinfo", &info); err != nil {
		return false, err
	}
	f := info.rotationFeature()
	return f.known && f.enabled, nil
}

func (s *RealmSetup) ensureRealm(ctx context.Context) error {
	realm := s.cfg.Realm
	var rep map[string]any
	found, err := s.get(ctx, "read realm "+realm, s.realmURL, &rep)
	if err != nil {
		return err
	}
	if !found {
		if err := s.send(ctx, "create realm "+realm, http.MethodPost, s.adminURL+"/realms",
			map[string]any{"realm": realm, "enabled": true}, false); err != nil {
			return err
		}
		s.changed("created realm %s", realm)
		return nil
	}
	if rep["enabled"] != true {
		if err := s.send(ctx, "enable realm "+realm, http.MethodPut, s.realmURL,
			map[string]any{"realm": realm, "enabled": true}, false); err != nil {
			return err
		}
		s.changed("updated realm %s: enabled", realm)
	}
	return nil
}

type roleRep struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

func (s *RealmSetup) ensureRealmRole(ctx context.Context, name, desc string) error {
	var role roleRep
	found, err := s.get(ctx, "read realm role "+name, s.realmURL+"/roles/"+url.PathEscape(name), &role)
	if err != nil || found {
		return err
	}
	if err := s.send(ctx, "create realm role "+name, http.MethodPost, s.realmURL+"/roles",
		roleRep{Name: name, Description: desc}, false); err != nil {
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
	maps.Copy(create, want)
	return clientSpec{clientID: clientID, create: create, want: want}
}

// consoleClient is the web console's public client: authorization code
// with PKCE (SPEC §11). The redirects are checked URLs.
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
	create := map[string]any{"clientId": SetupConsoleClient, "name": "espmdm console",
		"redirectUris": redirects, "webOrigins": origins, "attributes": attrs}
	maps.Copy(create, want)
	return clientSpec{clientID: SetupConsoleClient, create: create, want: want, attrs: attrs,
		contain: map[string][]string{"redirectUris": redirects, "webOrigins": origins}}
}

// checkRedirects checks redirect URIs of the console's client.
func checkRedirects(redirects []string) error {
	for _, r := range redirects {
		if u, err := url.Parse(r); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("keycloak: console redirect URI %q is not an http(s) URL", r)
		}
	}
	return nil
}

// EnsureConsoleClient creates the web console's public client
// SetupConsoleClient (authorization code with PKCE S256), or corrects its
// flags and adds what is missing of the redirect URIs and their origins
// (the client's other redirect URIs and origins are kept).
func (s *RealmSetup) EnsureConsoleClient(ctx context.Context, redirects []string) error {
	if err := checkRedirects(redirects); err != nil {
		return err
	}
	_, err := s.ensureClient(ctx, consoleClient(redirects))
	return err
}

// findClient returns the client's representation, nil when it does not
// exist.
func (s *RealmSetup) findClient(ctx context.Context, clientID string) (map[string]any, error) {
	var list []map[string]any
	if _, err := s.get(ctx, "look up client "+clientID,
		s.realmURL+"/clients?"+url.Values{"clientId": {clientID}}.Encode(), &list); err != nil {
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
func (s *RealmSetup) ensureClient(ctx context.Context, spec clientSpec) (string, error) {
	c, err := s.findClient(ctx, spec.clientID)
	if err != nil {
		return "", err
	}
	if c == nil {
		if err := s.send(ctx, "create client "+spec.clientID, http.MethodPost, s.realmURL+"/clients", spec.create, false); err != nil {
			return "", err
		}
		s.changed("created client %s", spec.clientID)
		if c, err = s.findClient(ctx, spec.clientID); err != nil {
			return "", err
		}
		if c == nil {
			return "", unavailable("create client "+spec.clientID, errors.New("keycloak does not list it after creating it"))
		}
		return fmt.Sprint(c["id"]), nil
	}
	id := fmt.Sprint(c["id"])
	var fixed []string
	for _, k := range slices.Sorted(maps.Keys(spec.want)) {
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
		for _, k := range slices.Sorted(maps.Keys(spec.attrs)) {
			if attrs[k] != spec.attrs[k] {
				attrs[k] = spec.attrs[k]
				fixed = append(fixed, k)
			}
		}
		c["attributes"] = attrs
	}
	for _, k := range slices.Sorted(maps.Keys(spec.contain)) {
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
	if err := s.send(ctx, "update client "+spec.clientID, http.MethodPut, s.realmURL+"/clients/"+url.PathEscape(id), c, true); err != nil {
		return "", err
	}
	s.changed("updated client %s: %s", spec.clientID, strings.Join(fixed, ", "))
	return id, nil
}

// ensureAdminAPIScope gives espmdm's service account the kc-admin-api
// client scope when the realm has it (Keycloak 26.8.2 and later refuse
// admin tokens without its audience).
func (s *RealmSetup) ensureAdminAPIScope(ctx context.Context, uuid, clientID string) error {
	const scope = "kc-admin-api"
	var scopes []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	if _, err := s.get(ctx, "list client scopes", s.realmURL+"/client-scopes", &scopes); err != nil {
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
	clientURL := s.realmURL + "/clients/" + url.PathEscape(uuid)
	if _, err := s.get(ctx, "list the default client scopes of "+clientID, clientURL+"/default-client-scopes", &defaults); err != nil {
		return err
	}
	for _, d := range defaults {
		if d.Name == scope {
			return nil
		}
	}
	if err := s.send(ctx, "add client scope "+scope+" to "+clientID, http.MethodPut,
		clientURL+"/default-client-scopes/"+url.PathEscape(scopeID), nil, false); err != nil {
		return err
	}
	s.changed("updated client %s: default client scope %s", clientID, scope)
	return nil
}

// serviceAccountUser returns the id and name of a client's service-account
// user.
func (s *RealmSetup) serviceAccountUser(ctx context.Context, uuid, clientID string) (id, name string, err error) {
	op := "read the service-account user of " + clientID
	var user struct {
		ID       string `json:"id"`
		Username string `json:"username"`
	}
	if _, err := s.get(ctx, op, s.realmURL+"/clients/"+url.PathEscape(uuid)+"/service-account-user", &user); err != nil {
		return "", "", err
	}
	if user.ID == "" {
		return "", "", unavailable(op, errors.New("keycloak returned none"))
	}
	return user.ID, user.Username, nil
}

// ensureManagementRoles maps realm-management client roles to a client's
// service account.
func (s *RealmSetup) ensureManagementRoles(ctx context.Context, uuid, clientID string, roles []string) error {
	userID, username, err := s.serviceAccountUser(ctx, uuid, clientID)
	if err != nil {
		return err
	}
	rm, err := s.findClient(ctx, "realm-management")
	if err != nil {
		return err
	}
	if rm == nil {
		return unavailable("grant realm-management roles to "+username, fmt.Errorf("realm %s has no realm-management client", s.cfg.Realm))
	}
	rmURL := s.realmURL + "/clients/" + url.PathEscape(fmt.Sprint(rm["id"]))
	mappingURL := s.realmURL + "/users/" + url.PathEscape(userID) + "/role-mappings/clients/" + url.PathEscape(fmt.Sprint(rm["id"]))
	var have []roleRep
	if _, err := s.get(ctx, "read the roles of "+username, mappingURL, &have); err != nil {
		return err
	}
	var add []roleRep
	var names []string
	for _, name := range roles {
		if slices.ContainsFunc(have, func(r roleRep) bool { return r.Name == name }) {
			continue
		}
		var role roleRep
		found, err := s.get(ctx, "read realm-management role "+name, rmURL+"/roles/"+url.PathEscape(name), &role)
		if err != nil {
			return err
		}
		if !found {
			return unavailable("grant realm-management roles to "+username, fmt.Errorf("realm %s: realm-management has no role %s", s.cfg.Realm, name))
		}
		add = append(add, role)
		names = append(names, name)
	}
	if len(add) == 0 {
		return nil
	}
	if err := s.send(ctx, "grant realm-management roles to "+username, http.MethodPost, mappingURL, add, false); err != nil {
		return err
	}
	s.changed("granted %s the realm-management roles %s", username, strings.Join(names, ", "))
	return nil
}

// ensureRealmRoleMapping maps a realm role to a client's service account.
func (s *RealmSetup) ensureRealmRoleMapping(ctx context.Context, uuid, clientID, roleName string) error {
	userID, username, err := s.serviceAccountUser(ctx, uuid, clientID)
	if err != nil {
		return err
	}
	return s.grantRealmRole(ctx, userID, username, roleName)
}

// grantRealmRole maps a realm role to a user, unless it has it.
func (s *RealmSetup) grantRealmRole(ctx context.Context, userID, username, roleName string) error {
	mappingURL := s.realmURL + "/users/" + url.PathEscape(userID) + "/role-mappings/realm"
	var have []roleRep
	if _, err := s.get(ctx, "read the realm roles of "+username, mappingURL, &have); err != nil {
		return err
	}
	if slices.ContainsFunc(have, func(r roleRep) bool { return r.Name == roleName }) {
		return nil
	}
	var role roleRep
	if _, err := s.get(ctx, "read realm role "+roleName, s.realmURL+"/roles/"+url.PathEscape(roleName), &role); err != nil {
		return err
	}
	if err := s.send(ctx, "grant realm role "+roleName+" to "+username, http.MethodPost, mappingURL, []roleRep{role}, false); err != nil {
		return err
	}
	s.changed("granted %s the realm role %s", username, roleName)
	return nil
}

// setupProfile and setupPolicy are the dev/test realm's.
func (s *RealmSetup) setupProfile() map[string]any {
	return map[string]any{
		"name": SetupRotationName,
		"description": "espmdm grace-mode rotation: a generated secret keeps the old one valid as the rotated secret for " +
			"ROTATION_GRACE; the main secret outlives any rotation schedule; updates never rotate",
		"executors": []any{map[string]any{
			"executor": rotationExecutor,
			"configuration": map[string]any{
				keyExpiration:        strconv.FormatInt(int64(SetupSecretLifetime/time.Second), 10),
				keyRotatedExpiration: strconv.FormatInt(int64(s.cfg.RotationGrace/time.Second), 10),
				keyRemainingRotation: "0",
			},
		}},
	}
}

func setupPolicy() map[string]any {
	return map[string]any{
		"name":        SetupRotationName,
		"description": "Covers the confidential clients, the espmdm device clients among them",
		"enabled":     true,
		"conditions": []any{map[string]any{
			"condition": "client-access-type", "configuration": map[string]any{"type": []any{"confidential"}},
		}},
		"profiles": []any{SetupRotationName},
	}
}

// ensureRotationPolicy merges espmdm's profile and policy into the realm's
// own: ours is replaced by name or appended, the others are kept.
func (s *RealmSetup) ensureRotationPolicy(ctx context.Context) error {
	if err := s.mergeClientPolicies(ctx, "client profile", "/client-policies/profiles", "profiles", s.setupProfile(),
		[]string{"executors"}); err != nil {
		return err
	}
	return s.mergeClientPolicies(ctx, "client policy", "/client-policies/policies", "policies", setupPolicy(),
		[]string{"enabled", "conditions", "profiles"})
}

func (s *RealmSetup) mergeClientPolicies(ctx context.Context, what, path, key string, ours map[string]any, compare []string) error {
	var doc map[string]any
	if _, err := s.get(ctx, "read the "+what+"s of realm "+s.cfg.Realm, s.realmURL+path, &doc); err != nil {
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
	if err := s.send(ctx, "write the "+what+"s of realm "+s.cfg.Realm, http.MethodPut, s.realmURL+path, doc, false); err != nil {
		return err
	}
	detail := ""
	if key == "profiles" {
		grace := s.cfg.RotationGrace
		detail = fmt.Sprintf(" (secret-rotation: %s %d s = %s)", keyRotatedExpiration, int64(grace/time.Second), shortDuration(grace))
	}
	s.changed("%s %s %s%s", verb, what, SetupRotationName, detail)
	return nil
}

// shortDuration writes whole days as 7d, else as time.Duration does
// without zero minutes and seconds (36h, 1h30m).
func shortDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d > 0 && d%day == 0 {
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	str := d.String() // 36h0m0s, 1h30m0s
	if strings.HasSuffix(str, "m0s") {
		str = strings.TrimSuffix(str, "0s")
	}
	if strings.HasSuffix(str, "h0m") {
		str = strings.TrimSuffix(str, "0m")
	}
	return str
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
func (s *RealmSetup) secret(ctx context.Context, uuid, clientID string) (string, error) {
	req := request{op: "read the secret of " + clientID, method: http.MethodGet,
		url: s.realmURL + "/clients/" + url.PathEscape(uuid) + "/client-secret", auth: true, sensitive: true}
	resp, err := s.do(ctx, req)
	if err != nil {
		return "", err
	}
	secret, err := secretValue(req, resp)
	if errors.Is(err, errMasked) {
		return "", unavailable(req.op, fmt.Errorf("keycloak masks it: %s needs realm-management's manage-clients in realm %s", s.who(), s.cfg.Realm))
	}
	return secret, err
}

// EnsureUser creates the realm user with the password, or sets the
// password of the existing one, and grants it the realm role. The profile
// is complete and the e-mail verified, so that Keycloak asks for nothing
// but the password at login.
func (s *RealmSetup) EnsureUser(ctx context.Context, username, password, role string) error {
	if username == "" || password == "" || role == "" {
		return errors.New("keycloak: a user needs a name, a password and a role")
	}
	type userRep struct {
		ID       string `json:"id"`
		Username string `json:"username"`
	}
	find := func() (*userRep, error) {
		var list []userRep
		if _, err := s.get(ctx, "look up user "+username,
			s.realmURL+"/users?"+url.Values{"username": {username}, "exact": {"true"}}.Encode(), &list); err != nil {
			return nil, err
		}
		for i := range list {
			if list[i].Username == username {
				return &list[i], nil
			}
		}
		return nil, nil
	}
	u, err := find()
	if err != nil {
		return err
	}
	cred := map[string]any{"type": "password", "value": password, "temporary": false}
	if u == nil {
		rep := map[string]any{
			"username": username, "enabled": true, "emailVerified": true,
			"email": username + "@espmdm.invalid", "firstName": "espmdm", "lastName": username,
			"credentials": []any{cred}, "requiredActions": []string{},
		}
		if err := s.send(ctx, "create user "+username, http.MethodPost, s.realmURL+"/users", rep, true); err != nil {
			return err
		}
		s.changed("created user %s", username)
		if u, err = find(); err != nil {
			return err
		}
		if u == nil {
			return unavailable("create user "+username, errors.New("keycloak does not list it after creating it"))
		}
	} else if err := s.send(ctx, "set the password of "+username, http.MethodPut,
		s.realmURL+"/users/"+url.PathEscape(u.ID)+"/reset-password", cred, true); err != nil {
		return err
	}
	return s.grantRealmRole(ctx, u.ID, username, role)
}
