package keycloak

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// Client attributes in which Keycloak's client secret rotation keeps its
// state (ClientSecretConstants).
const (
	// rotationAttrPrefix starts every one of them.
	rotationAttrPrefix = "client.secret."
	// attrSecretExpiration is the main secret's expiry (epoch seconds). A
	// secret-rotation executor sets it whenever it runs on the client, so a
	// client without it has never been under such a policy.
	attrSecretExpiration = "client.secret.expiration.time"
	attrRotated          = "client.secret.rotated" // the old secret, in plain text
	// attrSecretCreation is when Keycloak made the main secret (epoch
	// seconds, its own clock): set at the client's creation and at every
	// generation (KeycloakModelUtils.generateSecret), not by a PUT that
	// sets a secret. Checked on Keycloak 26.7.3.
	attrSecretCreation    = "client.secret.creation.time"
	attrRotatedCreation   = "client.secret.rotated.creation.time"
	attrRotatedExpiration = "client.secret.rotated.expiration.time"
)

// Secrets implements ports.IdentityProvider: the main secret and the
// rotated one (GET …/client-secret/rotated) while it authenticates, that is
// until its client.secret.rotated.expiration.time. Keycloak ignores a
// rotated secret while its client-secret-rotation feature is off, which
// this call cannot see: RotationPolicy tells.
func (a *Admin) Secrets(ctx context.Context, clientID string) (s model.Secrets, err error) {
	defer func(start time.Time) { a.observe("Secrets", start, err) }(time.Now())
	op := "read secrets of " + clientID
	c, err := a.mustLookup(ctx, op, clientID)
	if err != nil {
		return model.Secrets{}, err
	}
	current, err := a.secret(ctx, op, c.rep.ID)
	if err != nil {
		return model.Secrets{}, err
	}
	rotated, err := a.rotatedSecret(ctx, op, c)
	if err != nil {
		return model.Secrets{}, err
	}
	if rotated != "" && !rotatedValid(c.rep.Attributes, time.Now()) {
		rotated = ""
	}
	return model.Secrets{Current: current, Rotated: rotated}, nil
}

// SecretState implements ports.IdentityProvider with one GET of the
// client's representation: client.secret.creation.time, and a rotated
// secret that has not expired (see rotatedValid).
func (a *Admin) SecretState(ctx context.Context, clientID string) (st model.SecretState, err error) {
	defer func(start time.Time) { a.observe("SecretState", start, err) }(time.Now())
	op := "read the secret state of " + clientID
	err = a.withUUID(ctx, op, clientID, func(uuid string) error {
		c, err := a.getByUUID(ctx, op, uuid)
		if err != nil {
			return err
		}
		if sec, err := strconv.ParseInt(c.rep.Attributes[attrSecretCreation], 10, 64); err == nil && sec > 0 {
			st.CreatedAt = time.Unix(sec, 0).UTC()
		}
		st.Rotated = c.rep.Attributes[attrRotated] != "" && rotatedValid(c.rep.Attributes, time.Now())
		return nil
	})
	return st, err
}

// Now implements ports.IdentityProvider: the iat of an access token
// Keycloak issues to the admin client for this call (a client-credentials
// grant, which the token endpoint handles after the call began). The token
// replaces the cached admin token.
func (a *Admin) Now(ctx context.Context) (now time.Time, err error) {
	defer func(start time.Time) { a.observe("Now", start, err) }(time.Now())
	const op = "read Keycloak's clock"
	tok, err := a.tokens.fetchNow(ctx)
	if err != nil {
		return time.Time{}, unavailable(op, tokenError(err).err)
	}
	iat, err := issuedAt(tok.AccessToken)
	if err != nil {
		return time.Time{}, unavailable(op, err)
	}
	return iat, nil
}

// issuedAt reads the iat claim of a JWT without checking its signature
// (the token came straight from the token endpoint).
func issuedAt(jwt string) (time.Time, error) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("the admin access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, errors.New("the admin access token's payload is not base64url")
	}
	var claims struct {
		IAT *json.Number `json:"iat"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.IAT == nil {
		return time.Time{}, errors.New("the admin access token carries no iat")
	}
	sec, err := claims.IAT.Int64()
	if err != nil || sec <= 0 {
		return time.Time{}, errors.New("the admin access token's iat is not whole seconds")
	}
	return time.Unix(sec, 0).UTC(), nil
}

// rotatedSecret reads c's rotated secret; "" when it has none.
func (a *Admin) rotatedSecret(ctx context.Context, op string, c *found) (string, error) {
	req := request{op: op, method: http.MethodGet, url: a.clientURL(c.rep.ID, "client-secret", "rotated"),
		auth: true, sensitive: true, accept: []int{http.StatusNotFound}}
	resp, err := a.do(ctx, req)
	if err != nil {
		return "", err
	}
	if resp.status != http.StatusNotFound {
		return secretValue(req, resp)
	}
	// 404 "Client does not have a rotated secret", or the client is gone
	// ("Could not find client"). Should the wording change, look again.
	if strings.Contains(strings.ToLower(errorMessage(resp.body)), "rotated secret") {
		return "", nil
	}
	again, err := a.lookup(ctx, op, c.rep.ClientID)
	switch {
	case err != nil:
		return "", err
	case again == nil || again.rep.ID != c.rep.ID:
		return "", fmt.Errorf("%s: the client was deleted meanwhile: %w", op, model.ErrNotFound)
	}
	return "", nil
}

// rotatedValid reports whether Keycloak still accepts a client's rotated
// secret at now (OIDCClientSecretConfigWrapper.validateRotatedSecret: its
// creation and expiry times are set and the expiry is not past).
func rotatedValid(attrs map[string]string, now time.Time) bool {
	if attrs[attrRotatedCreation] == "" {
		return false
	}
	exp, err := strconv.ParseInt(attrs[attrRotatedExpiration], 10, 64)
	return err == nil && exp >= now.Unix()
}

// InvalidateRotatedSecret implements ports.IdentityProvider with DELETE
// …/client-secret/rotated, which Keycloak answers 204 whether or not the
// client has a rotated secret (and also while the feature is off: it then
// still removes a rotated secret left from before).
func (a *Admin) InvalidateRotatedSecret(ctx context.Context, clientID string) (err error) {
	defer func(start time.Time) { a.observe("InvalidateRotatedSecret", start, err) }(time.Now())
	op := "invalidate the rotated secret of " + clientID
	return a.withUUID(ctx, op, clientID, func(uuid string) error {
		_, err := a.do(ctx, request{op: op, method: http.MethodDelete, url: a.clientURL(uuid, "client-secret", "rotated"), auth: true})
		return err
	})
}

// CoverClient implements ports.IdentityProvider. A client is covered when a
// secret-rotation executor has run on it, which leaves the main secret's
// expiry in client.secret.expiration.time; Keycloak runs the executors of
// the policies that apply at a client's creation and updates (and at a
// secret regeneration), not at token requests. An uncovered client (made
// before the policy existed, or imported) is updated with its own
// representation, without its secret: the executor then only sets the
// expiry, it does not rotate. A covered client is never updated here:
// were its main secret expired, an update would rotate it.
//
// Where no policy with a secret-rotation executor applies, the update
// changes nothing and every call updates again; RotationPolicy says
// whether one does.
func (a *Admin) CoverClient(ctx context.Context, clientID string) (updated bool, err error) {
	defer func(start time.Time) { a.observe("CoverClient", start, err) }(time.Now())
	op := "cover client " + clientID
	c, err := a.mustLookup(ctx, op, clientID)
	if err != nil {
		return false, err
	}
	if covered(c.rep.Attributes) {
		return false, nil
	}
	if _, err := a.do(ctx, request{op: op, method: http.MethodPut, url: a.clientURL(c.rep.ID), body: c.forUpdate(), auth: true, sensitive: true}); err != nil {
		return false, err
	}
	return true, nil
}

// CoveredSecrets implements ports.CoveredSecretsReader with one GET of the
// client's representation (by its remembered UUID), which carries the
// secret, the rotated secret and the rotation attributes CoverClient looks
// at, and a PUT only for an uncovered client. This spares grace-mode
// generation the search by clientId and the separate secret reads.
func (a *Admin) CoveredSecrets(ctx context.Context, clientID string) (secrets model.Secrets, err error) {
	defer func(start time.Time) { a.observe("CoveredSecrets", start, err) }(time.Now())
	op := "read and cover client " + clientID
	err = a.withUUID(ctx, op, clientID, func(uuid string) error {
		c, err := a.getByUUID(ctx, op, uuid)
		if err != nil {
			return err
		}
		v, _ := c.raw["secret"].(string)
		if v == "" || v == masked {
			return unavailable(op, errors.New("keycloak returned the client without its secret (does the service account hold manage-clients?)"))
		}
		if !covered(c.rep.Attributes) {
			if _, err := a.do(ctx, request{op: op, method: http.MethodPut, url: a.clientURL(uuid), body: c.forUpdate(), auth: true, sensitive: true}); err != nil {
				return err
			}
		}
		secrets = model.Secrets{Current: v}
		if rotatedValid(c.rep.Attributes, time.Now()) {
			secrets.Rotated = c.rep.Attributes[attrRotated]
		}
		return nil
	})
	return secrets, err
}

// covered reports whether a secret-rotation executor has run on a client
// (Keycloak's hasClientSecretExpirationTime: a positive expiry).
func covered(attrs map[string]string) bool {
	exp, err := strconv.ParseInt(attrs[attrSecretExpiration], 10, 64)
	return err == nil && exp > 0
}

// The secret-rotation executor and its configuration keys
// (ClientSecretRotationExecutorFactory), with Keycloak's defaults.
const (
	rotationExecutor        = "secret-rotation"
	keyExpiration           = "expiration-period"
	keyRotatedExpiration    = "rotated-expiration-period"
	keyRemainingRotation    = "remaining-rotation-period"
	defaultExpirationPeriod = 29 * 24 * time.Hour
	defaultRotatedPeriod    = 2 * 24 * time.Hour
	defaultRemainingPeriod  = 10 * 24 * time.Hour
	// rotationFeature is the feature's name in /admin/serverinfo.
	rotationFeature = "CLIENT_SECRET_ROTATION"
)

// problemFeatureOff is the problem of a Keycloak without the feature.
const problemFeatureOff = "Keycloak's client-secret-rotation feature is off: start Keycloak with --features=client-secret-rotation"

// profilesRep is the answer of GET client-policies/profiles.
type profilesRep struct {
	Profiles       []profileRep `json:"profiles"`
	GlobalProfiles []profileRep `json:"globalProfiles"`
}

type profileRep struct {
	Name      string        `json:"name"`
	Executors []executorRep `json:"executors"`
}

type executorRep struct {
	Executor      string         `json:"executor"`
	Configuration map[string]any `json:"configuration"`
}

// policiesRep is the answer of GET client-policies/policies.
type policiesRep struct {
	Policies       []policyRep `json:"policies"`
	GlobalPolicies []policyRep `json:"globalPolicies"`
}

type policyRep struct {
	Name       string         `json:"name"`
	Enabled    bool           `json:"enabled"`
	Conditions []conditionRep `json:"conditions"`
	Profiles   []string       `json:"profiles"`
}

type conditionRep struct {
	Condition     string         `json:"condition"`
	Configuration map[string]any `json:"configuration"`
}

// serverInfoRep is the part of GET /admin/serverinfo that names features.
type serverInfoRep struct {
	Features []struct {
		Name    string `json:"name"`
		Enabled bool   `json:"enabled"`
	} `json:"features"`
	ProfileInfo struct {
		DisabledFeatures []string `json:"disabledFeatures"`
	} `json:"profileInfo"`
}

// featureState is what serverinfo said about the feature; known is false
// when it could not be read or did not say.
type featureState struct {
	known, enabled bool
	why            string // when not known
}

// RotationPolicy implements ports.IdentityProvider. It reads the realm's
// client profiles and policies (global ones included; this needs the
// realm-management role view-realm) and /admin/serverinfo, whose features
// list says whether CLIENT_SECRET_ROTATION is enabled (any realm-management
// role may read it; the realm's service account sees features without the
// system details).
func (a *Admin) RotationPolicy(ctx context.Context) (p model.RotationPolicy, err error) {
	defer func(start time.Time) { a.observe("RotationPolicy", start, err) }(time.Now())
	const op = "read the realm's client policies"
	var profiles profilesRep
	if err := a.getJSON(ctx, request{op: op, method: http.MethodGet, auth: true, role: "view-realm",
		url: a.adminBase + "/client-policies/profiles?include-global-profiles=true"}, &profiles); err != nil {
		return model.RotationPolicy{}, realmMissing(err)
	}
	var policies policiesRep
	if err := a.getJSON(ctx, request{op: op, method: http.MethodGet, auth: true, role: "view-realm",
		url: a.adminBase + "/client-policies/policies?include-global-policies=true"}, &policies); err != nil {
		return model.RotationPolicy{}, realmMissing(err)
	}
	feature, err := a.rotationFeature(ctx)
	if err != nil {
		return model.RotationPolicy{}, err
	}
	return evaluateRotation(profiles, policies, feature, time.Now()), nil
}

// getJSON runs a GET and decodes its answer into v.
func (a *Admin) getJSON(ctx context.Context, req request, v any) error {
	resp, err := a.do(ctx, req)
	if err != nil {
		return err
	}
	return resp.decode(req, v)
}

// rotationFeature reads whether the client-secret-rotation feature is on.
// A refused serverinfo is not an error: the feature is then unknown.
func (a *Admin) rotationFeature(ctx context.Context) (featureState, error) {
	req := request{op: "read Keycloak's features", method: http.MethodGet, url: a.serverInfo, auth: true,
		accept: []int{http.StatusForbidden}}
	resp, err := a.do(ctx, req)
	if err != nil {
		return featureState{}, err
	}
	if resp.status == http.StatusForbidden {
		return featureState{why: "GET /admin/serverinfo was refused (HTTP 403): grant the admin client's service account a realm-management role such as view-realm"}, nil
	}
	var info serverInfoRep
	if err := resp.decode(req, &info); err != nil {
		return featureState{}, err
	}
	return info.rotationFeature(), nil
}

func (info serverInfoRep) rotationFeature() featureState {
	for _, f := range info.Features {
		if f.Name == rotationFeature {
			return featureState{known: true, enabled: f.Enabled}
		}
	}
	if slices.Contains(info.ProfileInfo.DisabledFeatures, rotationFeature) {
		return featureState{known: true}
	}
	return featureState{why: "/admin/serverinfo does not list " + rotationFeature}
}

// maxEpoch bounds the expiry times Keycloak stores: epoch seconds in a Java
// int.
const maxEpoch = math.MaxInt32

// evaluateRotation decides, from the realm's client profiles and policies
// and the feature's state, whether a secret-rotation policy covers the
// device clients (confidential clients with ids starting "iotdevice-"),
// with which periods, and what is wrong.
//
// A policy applies when it is enabled and every one of its conditions
// accepts the device clients (Keycloak: at least one condition votes yes,
// none no; a policy without conditions applies to no client). Of the
// conditions only client-access-type and any-client (and their negative
// logic) can be evaluated here; any other makes the policy count as not
// covering, with a problem naming it. A covering policy must name a profile
// with a secret-rotation executor: the first such is used.
func evaluateRotation(profiles profilesRep, policies policiesRep, feature featureState, now time.Time) model.RotationPolicy {
	p := model.RotationPolicy{FeatureEnabled: feature.known && feature.enabled}
	switch {
	case !feature.known:
		p.Problems = append(p.Problems, "cannot tell whether Keycloak's client-secret-rotation feature is on: "+feature.why)
	case !feature.enabled:
		p.Problems = append(p.Problems, problemFeatureOff)
	}

	byName := map[string]profileRep{}
	for _, pr := range slices.Concat(profiles.Profiles, profiles.GlobalProfiles) {
		if _, ok := byName[pr.Name]; !ok { // a realm profile shadows a global one
			byName[pr.Name] = pr
		}
	}
	var why []string // why no policy covers, one line per policy
	for _, pol := range slices.Concat(policies.Policies, policies.GlobalPolicies) {
		exec, profile, missing := rotationProfile(pol, byName)
		for _, name := range missing {
			why = append(why, fmt.Sprintf("client policy %q names client profile %q, which does not exist", pol.Name, name))
		}
		applies, reason := coversDevices(pol)
		switch {
		case exec == nil:
			if pol.Enabled && applies {
				why = append(why, fmt.Sprintf("client policy %q covers the device clients, but none of its profiles %q has a %s executor",
					pol.Name, pol.Profiles, rotationExecutor))
			}
		case !pol.Enabled:
			why = append(why, fmt.Sprintf("client policy %q (profile %q with the %s executor) is disabled", pol.Name, profile, rotationExecutor))
		case !applies:
			why = append(why, reason)
		default:
			p.Covered = true
			p.Name = pol.Name + "/" + profile
			p.Problems = append(p.Problems, periods(&p, profile, exec.Configuration, now)...)
			return p
		}
	}
	if len(why) == 0 {
		why = []string{fmt.Sprintf("no client policy uses a client profile with a %s executor: add a profile with that executor "+
			"and an enabled policy with the condition client-access-type (confidential) that uses it", rotationExecutor)}
	}
	p.Problems = append(p.Problems, why...)
	return p
}

// rotationProfile returns the first secret-rotation executor among pol's
// profiles and its profile's name, and the names of profiles that do not
// exist.
func rotationProfile(pol policyRep, byName map[string]profileRep) (exec *executorRep, profile string, missing []string) {
	for _, name := range pol.Profiles {
		pr, ok := byName[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		for i, e := range pr.Executors {
			if e.Executor == rotationExecutor && exec == nil {
				exec, profile = &pr.Executors[i], name
			}
		}
	}
	return exec, profile, missing
}

// coversDevices evaluates pol's conditions for a confidential device
// client; when they do not cover it, reason says why.
func coversDevices(pol policyRep) (bool, string) {
	if len(pol.Conditions) == 0 {
		return false, fmt.Sprintf("client policy %q has no conditions, so Keycloak applies it to no client", pol.Name)
	}
	for _, c := range pol.Conditions {
		negative := truthy(c.Configuration["is-negative-logic"])
		var yes bool
		switch c.Condition {
		case "any-client":
			yes = true
		case "client-access-type":
			yes = slices.Contains(stringList(c.Configuration["type"]), "confidential")
		default:
			return false, fmt.Sprintf("client policy %q has the condition %s, which espmdm cannot evaluate for the device clients: "+
				"cover them with client-access-type (confidential) or any-client", pol.Name, c.Condition)
		}
		if yes == negative {
			cfg, _ := json.Marshal(c.Configuration)
			return false, fmt.Sprintf("client policy %q does not cover the device clients (confidential clients): its condition %s %s excludes them",
				pol.Name, c.Condition, cfg)
		}
	}
	return true, ""
}

// periods fills p's periods from a secret-rotation executor's configuration
// (Keycloak's defaults for absent keys) and returns what is wrong with them.
func periods(p *model.RotationPolicy, profile string, cfg map[string]any, now time.Time) []string {
	var problems []string
	get := func(key string, def time.Duration) time.Duration {
		v, ok := cfg[key]
		if !ok || v == nil {
			return def
		}
		n, err := seconds(v)
		if err != nil {
			problems = append(problems, fmt.Sprintf("client profile %q: %s %v is not a whole number of seconds", profile, key, v))
			return def
		}
		return time.Duration(n) * time.Second
	}
	p.Expiration = get(keyExpiration, defaultExpirationPeriod)
	p.RotatedExpiration = get(keyRotatedExpiration, defaultRotatedPeriod)
	p.RemainingRotation = get(keyRemainingRotation, defaultRemainingPeriod)

	secs := func(d time.Duration) int64 { return int64(d / time.Second) }
	if p.Expiration <= 0 {
		problems = append(problems, fmt.Sprintf("client profile %q: %s is %d s: it must be positive", profile, keyExpiration, secs(p.Expiration)))
	} else if last := now.Unix() + secs(p.Expiration); last > maxEpoch {
		problems = append(problems, fmt.Sprintf("client profile %q: %s is %d s: a secret generated now would expire after %s, "+
			"beyond the epoch seconds Keycloak can store (2^31-1); use at most %d s",
			profile, keyExpiration, secs(p.Expiration), time.Unix(maxEpoch, 0).UTC().Format(time.DateOnly), maxEpoch-now.Unix()))
	}
	switch {
	case p.RotatedExpiration <= 0:
		problems = append(problems, fmt.Sprintf("client profile %q: %s is %d s: a generated secret ends the old one at once, leaving no grace",
			profile, keyRotatedExpiration, secs(p.RotatedExpiration)))
	case p.RotatedExpiration > p.Expiration:
		problems = append(problems, fmt.Sprintf("client profile %q: %s (%d s) is longer than %s (%d s)",
			profile, keyRotatedExpiration, secs(p.RotatedExpiration), keyExpiration, secs(p.Expiration)))
	}
	if p.RemainingRotation > 0 {
		problems = append(problems, fmt.Sprintf("client profile %q: %s is %d s: Keycloak then rotates a secret by itself on client updates "+
			"in that time before it expires, behind espmdm's back; set it to 0", profile, keyRemainingRotation, secs(p.RemainingRotation)))
	}
	return problems
}

// seconds reads a configuration value: a JSON number or a decimal string.
func seconds(v any) (int64, error) {
	switch x := v.(type) {
	case float64:
		if x != math.Trunc(x) || math.Abs(x) > math.MaxInt32 {
			return 0, errors.New("not a whole number")
		}
		return int64(x), nil
	case string:
		return strconv.ParseInt(strings.TrimSpace(x), 10, 32)
	}
	return 0, errors.New("not a number")
}

// truthy reads a boolean configuration value (true or "true").
func truthy(v any) bool {
	switch x := v.(type) {
	case bool:
		return x
	case string:
		return strings.EqualFold(x, "true")
	}
	return false
}

// stringList reads a configuration value that is a list of strings (or a
// single string).
func stringList(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}
