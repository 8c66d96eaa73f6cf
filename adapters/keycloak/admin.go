package keycloak

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// AdminConfig configures Admin.
type AdminConfig struct {
	// BaseURL is Keycloak's root URL, e.g. http://127.0.0.1:18080. Use the
	// URL of Keycloak's configured hostname: the admin API refuses tokens
	// whose issuer names another host.
	BaseURL string
	// Realm holds the device clients and the admin client.
	Realm string
	// ClientID and ClientSecret are the admin service-account client
	// (realm-management manage-clients, view-clients, query-clients; and
	// view-realm for RotationPolicy).
	ClientID     string
	ClientSecret string
	// DeviceAudience is put into device tokens' aud by an audience mapper.
	DeviceAudience string
	// DeviceRole is the realm role a hardcoded-role mapper puts into device
	// tokens; default "iotdevice".
	DeviceRole string
	// Timeout bounds each HTTP request (and each admin token fetch);
	// default 10s.
	Timeout time.Duration
	// MaxConcurrent bounds the requests in flight; default 4 (espmdm's
	// KEYCLOAK_MAX_CONCURRENCY sets it, default 8).
	MaxConcurrent int
	// Retries is how often an idempotent request (GET, PUT, DELETE) is
	// repeated after a network error, timeout or 5xx: 0 means the default
	// 2, a negative value none. Creating a client or a secret is never
	// repeated.
	Retries int
	// RetryBackoff is the pause before the first repetition, doubled for
	// each further one; default 200ms.
	RetryBackoff time.Duration
	// HTTPClient sends the requests; default a client of its own.
	HTTPClient *http.Client
	// Observe, when set, is called after each IdentityProvider operation
	// with its name ("CreateClient", ...), its error and its duration (for
	// metrics).
	Observe func(op string, err error, d time.Duration)
}

// Admin manages device clients through Keycloak's Admin REST API. It is safe
// for concurrent use.
type Admin struct {
	transport
	cfg          AdminConfig
	adminBase    string // {BaseURL}/admin/realms/{realm}
	serverInfo   string // {BaseURL}/admin/serverinfo
	discoveryURL string
	uuids        sync.Map // clientId -> client UUID, see withUUID
}

var (
	_ ports.IdentityProvider     = (*Admin)(nil)
	_ ports.CoveredSecretsReader = (*Admin)(nil)
)

// NewAdmin checks cfg and returns an Admin. It does not contact Keycloak:
// use Ping for that.
func NewAdmin(cfg AdminConfig) (*Admin, error) {
	base, err := parseBaseURL(cfg.BaseURL)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.Realm == "":
		return nil, errors.New("keycloak: the realm is required")
	case cfg.ClientID == "" || cfg.ClientSecret == "":
		return nil, errors.New("keycloak: the admin client id and secret are required")
	case cfg.DeviceAudience == "":
		return nil, errors.New("keycloak: the device audience is required")
	case cfg.Timeout < 0 || cfg.MaxConcurrent < 0 || cfg.RetryBackoff < 0:
		return nil, errors.New("keycloak: timeout, concurrency and backoff must not be negative")
	}
	if cfg.DeviceRole == "" {
		cfg.DeviceRole = "iotdevice"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxConcurrent == 0 {
		cfg.MaxConcurrent = 4
	}
	retries := cfg.Retries
	switch {
	case retries == 0:
		retries = 2
	case retries < 0:
		retries = 0
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = 200 * time.Millisecond
	}
	realmURL := base + "/realms/" + url.PathEscape(cfg.Realm)
	cc := &clientcredentials.Config{
		ClientID:     cfg.ClientID,
		ClientSecret: cfg.ClientSecret,
		TokenURL:     realmURL + "/protocol/openid-connect/token",
		AuthStyle:    oauth2.AuthStyleInParams,
	}
	a := &Admin{
		transport:    newTransport(cfg.HTTPClient, cc.Token, cfg.MaxConcurrent, cfg.Timeout, retries, cfg.RetryBackoff),
		cfg:          cfg,
		adminBase:    base + "/admin/realms/" + url.PathEscape(cfg.Realm),
		serverInfo:   base + "/admin/serverinfo",
		discoveryURL: realmURL + "/.well-known/openid-configuration",
	}
	a.base = a.adminBase
	a.refused = adminRefused
	return a, nil
}

// adminRefused advises on a 401 or 403 of the admin API to the admin client.
func adminRefused(code int, req request) string {
	if code == http.StatusForbidden && req.role != "" {
		return "the admin API refused the admin token: grant the admin client's service account the realm-management role " + req.role
	}
	return "the admin API refused the admin token: check the admin client's credentials, its realm-management roles " +
		"(manage-clients, view-clients, query-clients) and that the Keycloak URL matches Keycloak's configured hostname " +
		"(on Keycloak 26.8.2 or later, also that the admin client has the kc-admin-api client scope)"
}

// Close closes the idle connections of the Admin's own HTTP client (not of
// an AdminConfig.HTTPClient). The Admin stays usable: a later request
// dials again.
func (a *Admin) Close() { a.close() }

// parseBaseURL checks an http(s) root URL and returns it without a trailing
// slash.
func parseBaseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("keycloak: base URL %q is not an http(s) URL", raw)
	}
	if u.User != nil {
		return "", errors.New("keycloak: the base URL must not carry credentials")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// Operations lists the names Observe is called with, one per
// IdentityProvider method (for metrics that exist before their first use).
var Operations = []string{
	"CreateClient", "DeleteClient", "ClientStatus", "RepairClient", "ClientSecret", "RegenerateSecret",
	"SetSecret", "Secrets", "InvalidateRotatedSecret", "CoverClient", "RotationPolicy", "ListDeviceClients", "Ping",
	"SecretState", "Now",
}

// observe reports one operation to cfg.Observe.
func (a *Admin) observe(op string, start time.Time, err error) {
	if a.cfg.Observe != nil {
		a.cfg.Observe(op, err, time.Since(start))
	}
}

func (a *Admin) clientURL(uuid string, sub ...string) string {
	u := a.adminBase + "/clients/" + url.PathEscape(uuid)
	for _, s := range sub {
		u += "/" + s
	}
	return u
}

// CreateClient implements ports.IdentityProvider: it creates a device
// client as SPEC §1 describes and returns the secret Keycloak generated.
func (a *Admin) CreateClient(ctx context.Context, clientID string) (secret string, err error) {
	defer func(start time.Time) { a.observe("CreateClient", start, err) }(time.Now())
	op := "create client " + clientID
	if _, _, ok := model.ParseClientID(clientID); !ok {
		return "", model.Invalid("client_id", "%q is not a device client id", clientID)
	}
	uuid, err := a.create(ctx, op, clientID)
	if err != nil {
		return "", err
	}
	a.uuids.Store(clientID, uuid)
	secret, err = a.secret(ctx, op, uuid)
	if err != nil {
		// Leave nothing half made behind; if this fails too the
		// reconciler removes the orphan.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
		defer cancel()
		_, _ = a.do(dctx, request{op: op, method: http.MethodDelete, url: a.clientURL(uuid), auth: true})
		return "", err
	}
	return secret, nil
}

// create posts a new device client and returns its UUID.
func (a *Admin) create(ctx context.Context, op, clientID string) (string, error) {
	resp, err := a.do(ctx, request{op: op, method: http.MethodPost, url: a.adminBase + "/clients",
		body: a.newClient(clientID, time.Now()), auth: true})
	if err != nil {
		return "", err
	}
	if id := uuidFromLocation(resp.header.Get("Location")); id != "" {
		return id, nil
	}
	// No usable Location header: look the new client up.
	c, err := a.lookup(ctx, op, clientID)
	if err != nil {
		return "", err
	}
	if c == nil {
		return "", unavailable(op, errors.New("the created client cannot be found"))
	}
	return c.rep.ID, nil
}

// secret reads a client's current secret.
func (a *Admin) secret(ctx context.Context, op, uuid string) (string, error) {
	req := request{op: op, method: http.MethodGet, url: a.clientURL(uuid, "client-secret"), auth: true, sensitive: true}
	resp, err := a.do(ctx, req)
	if err != nil {
		return "", err
	}
	return secretValue(req, resp)
}

// masked is how Keycloak shows a secret to a caller without manage-clients.
const masked = "**********"

// errMasked is a secret read back masked.
var errMasked = errors.New("keycloak masked the client secret: the admin client needs realm-management manage-clients")

// secretValue decodes the CredentialRepresentation of a client secret.
func secretValue(req request, resp response) (string, error) {
	var cred struct {
		Value string `json:"value"`
	}
	if err := resp.decode(req, &cred); err != nil {
		return "", err
	}
	switch cred.Value {
	case "":
		return "", unavailable(req.op, errors.New("keycloak returned an empty client secret"))
	case masked:
		return "", unavailable(req.op, errMasked)
	}
	return cred.Value, nil
}

// DeleteClient implements ports.IdentityProvider. A missing client is not
// an error.
func (a *Admin) DeleteClient(ctx context.Context, clientID string) (err error) {
	defer func(start time.Time) { a.observe("DeleteClient", start, err) }(time.Now())
	op := "delete client " + clientID
	a.uuids.Delete(clientID)
	c, err := a.lookup(ctx, op, clientID)
	if err != nil || c == nil {
		return err
	}
	_, err = a.do(ctx, request{op: op, method: http.MethodDelete, url: a.clientURL(c.rep.ID), auth: true})
	if errors.Is(err, model.ErrNotFound) {
		return nil // deleted meanwhile
	}
	return err
}

// ClientStatus implements ports.IdentityProvider.
func (a *Admin) ClientStatus(ctx context.Context, clientID string) (st model.IdentityStatus, err error) {
	defer func(start time.Time) { a.observe("ClientStatus", start, err) }(time.Now())
	c, err := a.lookup(ctx, "client status "+clientID, clientID)
	if err != nil {
		return model.IdentityStatus{}, err
	}
	return a.status(clientID, c), nil
}

// RepairClient implements ports.IdentityProvider: it creates a missing
// client and otherwise corrects its flags and mappers in place, leaving its
// secret and other settings alone.
func (a *Admin) RepairClient(ctx context.Context, clientID string) (st model.IdentityStatus, err error) {
	defer func(start time.Time) { a.observe("RepairClient", start, err) }(time.Now())
	op := "repair client " + clientID
	if _, _, ok := model.ParseClientID(clientID); !ok {
		return model.IdentityStatus{}, model.Invalid("client_id", "%q is not a device client id", clientID)
	}
	c, err := a.lookup(ctx, op, clientID)
	if err != nil {
		return model.IdentityStatus{}, err
	}
	if c == nil {
		_, err := a.create(ctx, op, clientID)
		if err != nil && !errors.Is(err, model.ErrConflict) { // conflict: created meanwhile
			return model.IdentityStatus{}, err
		}
	} else if err := a.repair(ctx, op, c); err != nil {
		return model.IdentityStatus{}, err
	}
	c, err = a.lookup(ctx, op, clientID)
	if err != nil {
		return model.IdentityStatus{}, err
	}
	return a.status(clientID, c), nil
}

// ClientSecret implements ports.IdentityProvider.
func (a *Admin) ClientSecret(ctx context.Context, clientID string) (secret string, err error) {
	defer func(start time.Time) { a.observe("ClientSecret", start, err) }(time.Now())
	op := "read secret of " + clientID
	err = a.withUUID(ctx, op, clientID, func(uuid string) error {
		var err error
		secret, err = a.secret(ctx, op, uuid)
		return err
	})
	return secret, err
}

// withUUID runs call with the client's UUID, looked up once and then
// remembered: most rotation steps need only the UUID, and a lookup by
// clientId is a search. A remembered UUID that Keycloak answers 404 for
// (the client was deleted or recreated behind espmdm's back) is looked up
// again and call runs once more; nothing happened at the 404, so this is
// safe for every call. A missing client is model.ErrNotFound.
func (a *Admin) withUUID(ctx context.Context, op, clientID string, call func(uuid string) error) error {
	if v, ok := a.uuids.Load(clientID); ok {
		err := call(v.(string))
		if !errors.Is(err, model.ErrNotFound) {
			return err
		}
		a.uuids.CompareAndDelete(clientID, v)
	}
	c, err := a.mustLookup(ctx, op, clientID)
	if err != nil {
		return err
	}
	a.uuids.Store(clientID, c.rep.ID)
	return call(c.rep.ID)
}

// RegenerateSecret implements ports.IdentityProvider with Keycloak's
// "regenerate secret". Under a client policy with a secret-rotation
// executor the old secret stays valid as the rotated secret for the
// profile's rotated-expiration-period (Keycloak applies the policy at this
// call, also to a client it was never applied to); without one the old
// secret stops working at once. Tokens already issued stay valid until they
// expire either way.
func (a *Admin) RegenerateSecret(ctx context.Context, clientID string) (secret string, err error) {
	defer func(start time.Time) { a.observe("RegenerateSecret", start, err) }(time.Now())
	op := "regenerate secret of " + clientID
	err = a.withUUID(ctx, op, clientID, func(uuid string) error {
		req := request{op: op, method: http.MethodPost, url: a.clientURL(uuid, "client-secret"), auth: true, sensitive: true}
		resp, err := a.do(ctx, req)
		if err != nil {
			return err
		}
		secret, err = secretValue(req, resp)
		return err
	})
	return secret, err
}

// SetSecret implements ports.IdentityProvider: a PUT of the client with the
// secret, which makes it the only valid one. The PUT removes the rotated
// secret's attributes, and the main secret's expiry too: under a
// secret-rotation policy Keycloak then gives the set secret a fresh
// expiry, where an expired one would make it rotate the set secret away
// at this very update.
func (a *Admin) SetSecret(ctx context.Context, clientID, secret string) (err error) {
	defer func(start time.Time) { a.observe("SetSecret", start, err) }(time.Now())
	op := "set secret of " + clientID
	if secret == "" || secret == masked {
		return model.Invalid("secret", "an empty or masked secret cannot be set")
	}
	c, err := a.mustLookup(ctx, op, clientID)
	if err != nil {
		return err
	}
	rep := c.forUpdate()
	rep["secret"] = secret
	attrs, _ := rep["attributes"].(map[string]any)
	if attrs == nil {
		attrs = map[string]any{}
	}
	for _, k := range []string{attrRotated, attrRotatedCreation, attrRotatedExpiration, attrSecretExpiration} {
		attrs[k] = "" // an empty value removes the attribute
	}
	rep["attributes"] = attrs
	_, err = a.do(ctx, request{op: op, method: http.MethodPut, url: a.clientURL(c.rep.ID), body: rep, auth: true, sensitive: true})
	return err
}

// listPage is the page size of ListDeviceClients.
const listPage = 100

// ListDeviceClients implements ports.IdentityProvider.
func (a *Admin) ListDeviceClients(ctx context.Context) (list []model.ClientInfo, err error) {
	defer func(start time.Time) { a.observe("ListDeviceClients", start, err) }(time.Now())
	const op = "list device clients"
	now := time.Now()
	seen := map[string]bool{}
	for first := 0; ; first += listPage {
		q := url.Values{
			"clientId": {model.ClientIDPrefix},
			"search":   {"true"}, // a case-insensitive substring match
			"first":    {strconv.Itoa(first)},
			"max":      {strconv.Itoa(listPage)},
		}
		var page []clientRep
		req := request{op: op, method: http.MethodGet, url: a.adminBase + "/clients?" + q.Encode(), auth: true, sensitive: true}
		resp, err := a.do(ctx, req)
		if err != nil {
			return nil, realmMissing(err)
		}
		if err := resp.decode(req, &page); err != nil {
			return nil, err
		}
		for _, c := range page {
			if !strings.HasPrefix(c.ClientID, model.ClientIDPrefix) || seen[c.ClientID] {
				continue
			}
			seen[c.ClientID] = true
			list = append(list, model.ClientInfo{ClientID: c.ClientID, CreatedAt: c.createdAt(),
				Covered: covered(c.Attributes), Rotated: c.Attributes[attrRotated] != "" && rotatedValid(c.Attributes, now)})
		}
		if len(page) < listPage {
			return list, nil
		}
	}
}

// Ping implements ports.IdentityProvider: it fetches the realm's OpenID
// discovery document, then looks up the admin client itself through the
// Admin REST API. Keycloak answers a lookup by a caller without
// query-clients/view-clients with an empty list, not an error, so without
// this check such a misconfiguration would pass for "no such client" and
// leave device clients behind.
func (a *Admin) Ping(ctx context.Context) (err error) {
	defer func(start time.Time) { a.observe("Ping", start, err) }(time.Now())
	const op = "ping"
	req := request{op: op, method: http.MethodGet, url: a.discoveryURL}
	resp, err := a.do(ctx, req)
	if err != nil {
		return realmMissing(err)
	}
	var doc struct {
		Issuer string `json:"issuer"`
	}
	if err := resp.decode(req, &doc); err != nil {
		return err
	}
	if doc.Issuer == "" {
		return unavailable(op, errors.New("the discovery document names no issuer"))
	}
	self, err := a.lookup(ctx, op, a.cfg.ClientID)
	if err != nil {
		return err
	}
	if self == nil {
		return unavailable(op, fmt.Errorf("the admin client %s cannot see itself in the realm's clients: "+
			"grant its service account realm-management view-clients and query-clients (and manage-clients)", a.cfg.ClientID))
	}
	return nil
}

// realmMissing turns a 404 of a realm-level endpoint into an unavailable
// error: the realm (or the URL) is wrong, no client is missing.
func realmMissing(err error) error {
	if errors.Is(err, model.ErrNotFound) {
		// Not wrapped: the error must stop matching ErrNotFound.
		return &model.UnavailableError{Service: service, Err: errors.New("realm not found (check the Keycloak URL and realm): " + err.Error())}
	}
	return err
}
