package keycloak_test

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
)

// deviceToken creates a device client and returns a fresh token of it.
func deviceToken(t *testing.T, st *integration.Stack) (clientID, raw string) {
	t.Helper()
	a := newAdmin(t, adminConfig(st))
	id, secret := createClient(t, a)
	return id, mustToken(t, st, id, secret)
}

// resign signs claims with key under header's kid, as a forger would.
func resign(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

func TestVerifyAdmin(t *testing.T) {
	st := integration.Shared(t)
	v := newVerifier(t, verifierConfig(st))

	op := mustToken(t, st, st.OperatorClientID, st.OperatorClientSecret)
	p, err := v.VerifyAdmin(t.Context(), op)
	mustNoErr(t, "VerifyAdmin(operator)", err)
	if p.ClientID != st.OperatorClientID || p.Subject == "" || !p.HasRole("mdm-admin") {
		t.Errorf("VerifyAdmin(operator): got %+v, want client %s with a subject and mdm-admin", p, st.OperatorClientID)
	}
	if want := "service-account-" + st.OperatorClientID; p.Username != want {
		t.Errorf("VerifyAdmin(operator): username %q, want %q", p.Username, want)
	}

	viewer := mustToken(t, st, st.ViewerClientID, st.ViewerClientSecret)
	p, err = v.VerifyAdmin(t.Context(), viewer)
	mustNoErr(t, "VerifyAdmin(viewer)", err)
	if !p.HasRole("mdm-viewer") || p.HasRole("mdm-admin") {
		t.Errorf("VerifyAdmin(viewer): roles %v, want mdm-viewer without mdm-admin", p.Roles)
	}

	_, dev := deviceToken(t, st)
	if _, err := v.VerifyAdmin(t.Context(), dev); !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyAdmin(device token): got %v, want ErrUnauthenticated", err)
	}
	// And the other way round: an operator token is no device token.
	if _, err := v.VerifyDevice(t.Context(), op); !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyDevice(operator token): got %v, want ErrUnauthenticated", err)
	}

	// An admin audience, when configured, is required.
	cfg := verifierConfig(st)
	cfg.AdminAudience = "espmdm-admin-api"
	if _, err := newVerifier(t, cfg).VerifyAdmin(t.Context(), op); !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyAdmin without the configured admin audience: got %v, want ErrUnauthenticated", err)
	}
}

func TestVerifyDeviceRefusesBadTokens(t *testing.T) {
	st := integration.Shared(t)
	id, raw := deviceToken(t, st)
	claims, header := unverifiedClaims(t, raw)
	kid, _ := header["kid"].(string)
	iat, err := claims.GetIssuedAt()
	mustNoErr(t, "iat", err)
	exp, err := claims.GetExpirationTime()
	mustNoErr(t, "exp", err)

	// The genuine token passes: the refusals below are the variations'.
	good := newVerifier(t, verifierConfig(st))
	if _, err := good.VerifyDevice(t.Context(), raw); err != nil {
		t.Fatalf("VerifyDevice(genuine %s token): %v", id, err)
	}

	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// The issuer's public key, as an HMAC key (the alg confusion attack).
	var pubN []byte
	if code, jwks := getJSON(t, st.IssuerURL+"/protocol/openid-connect/certs"); code == http.StatusOK {
		for _, k := range jwks["keys"].([]any) {
			if k := k.(map[string]any); k["kid"] == kid {
				pubN, _ = base64.RawURLEncoding.DecodeString(k["n"].(string))
			}
		}
	}
	if len(pubN) == 0 {
		t.Fatalf("the JWKS has no key %s", kid)
	}
	parts := strings.Split(raw, ".")
	enc := base64.RawURLEncoding.EncodeToString
	tampered := withClaim(claims, "azp", model.ClientID("kc_test", "zzzzzzzz"))
	tamperedPayload, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, tampered).SigningString()

	at := func(t time.Time) func() time.Time { return func() time.Time { return t } }
	tests := []struct {
		name   string
		raw    string
		config func(*keycloak.VerifierConfig)
		why    string
	}{
		{name: "re-signed with another key under the same kid", raw: resign(t, jwt.SigningMethodRS256, forger, kid, claims), why: "bad signature"},
		{name: "claims changed, signature kept", raw: parts[0] + "." + strings.Split(tamperedPayload, ".")[1] + "." + parts[2], why: "bad signature"},
		{name: "alg none", raw: enc([]byte(`{"alg":"none","typ":"JWT","kid":"`+kid+`"}`)) + "." + parts[1] + ".", why: "bad signature or algorithm"},
		{name: "HS256 with a guessable key", raw: resign(t, jwt.SigningMethodHS256, []byte("secret"), kid, claims), why: "bad signature or algorithm"},
		{name: "HS256 keyed with the issuer's public key", raw: resign(t, jwt.SigningMethodHS256, pubN, kid, claims), why: "bad signature or algorithm"},
		{name: "unknown kid", raw: resign(t, jwt.SigningMethodRS256, forger, "no-such-kid", claims), why: "unknown signing key"},
		{name: "no kid", raw: resign(t, jwt.SigningMethodRS256, forger, "", claims), why: "no key id"},
		{name: "signature cut off", raw: parts[0] + "." + parts[1] + ".", why: "bad signature"},
		{name: "empty", raw: "", why: "empty token"},
		{name: "garbage", raw: "not a token", why: "malformed"},
		{name: "three garbage segments", raw: "a.b.c", why: "malformed"},
		{name: "bad base64", raw: "@@@.@@@.@@@", why: "malformed"},
		{name: "JSON garbage", raw: enc([]byte(`{"alg":`)) + "." + enc([]byte(`[]`)) + "." + parts[2], why: "malformed"},
		{name: "claims of the wrong type", raw: parts[0] + "." + enc([]byte(`{"exp":"tomorrow"}`)) + "." + parts[2], why: "malformed"},
		{name: "huge", raw: strings.Repeat("A", 1<<20), why: "too long"},
		{name: "wrong issuer", raw: raw, config: func(c *keycloak.VerifierConfig) {
			c.JWKSURL = c.IssuerURL + "/protocol/openid-connect/certs"
			c.IssuerURL = strings.Replace(c.IssuerURL, "127.0.0.1", "localhost", 1)
		}, why: "wrong issuer"},
		{name: "issuer differing in a trailing slash", raw: raw, config: func(c *keycloak.VerifierConfig) {
			c.JWKSURL = c.IssuerURL + "/protocol/openid-connect/certs"
			c.IssuerURL += "/"
		}, why: "wrong issuer"},
		{name: "wrong audience", raw: raw, config: func(c *keycloak.VerifierConfig) { c.DeviceAudience = "another-audience" }, why: "wrong audience"},
		{name: "expired beyond the leeway", raw: raw, config: func(c *keycloak.VerifierConfig) { c.Now = at(exp.Add(31 * time.Second)) }, why: "expired"},
		{name: "issued in the future beyond the leeway", raw: raw, config: func(c *keycloak.VerifierConfig) { c.Now = at(iat.Add(-31 * time.Second)) }, why: "issued in the future"},
		{name: "expired with a short leeway", raw: raw, config: func(c *keycloak.VerifierConfig) {
			c.Leeway = time.Second
			c.Now = at(exp.Add(2 * time.Second))
		}, why: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := good
			if tt.config != nil {
				cfg := verifierConfig(st)
				tt.config(&cfg)
				v = newVerifier(t, cfg)
			}
			_, err := v.VerifyDevice(t.Context(), tt.raw)
			if !errors.Is(err, model.ErrUnauthenticated) {
				t.Fatalf("VerifyDevice: got %v, want ErrUnauthenticated", err)
			}
			if !strings.Contains(err.Error(), tt.why) {
				t.Errorf("VerifyDevice: got %v, want it refused for %q", err, tt.why)
			}
			if errors.Is(err, model.ErrUnavailable) {
				t.Errorf("VerifyDevice: %v also matches ErrUnavailable", err)
			}
			if len(tt.raw) > 10 && strings.Contains(err.Error(), tt.raw[len(tt.raw)-10:]) {
				t.Errorf("VerifyDevice error quotes the token: %v", err)
			}
			if _, err := v.VerifyAdmin(t.Context(), tt.raw); err == nil {
				t.Errorf("VerifyAdmin accepted it")
			}
		})
	}

	// Within the leeway the same token passes.
	for name, now := range map[string]time.Time{
		"expired 29s ago":       exp.Add(29 * time.Second),
		"issued 29s from now":   iat.Add(-29 * time.Second),
		"in the middle of life": iat.Add(exp.Sub(iat.Time) / 2),
	} {
		cfg := verifierConfig(st)
		cfg.Now = at(now)
		if _, err := newVerifier(t, cfg).VerifyDevice(t.Context(), raw); err != nil {
			t.Errorf("VerifyDevice at %s: %v", name, err)
		}
	}
}

// withClaim returns a copy of c with key set to value.
func withClaim(c jwt.MapClaims, key string, value any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for k, v := range c {
		out[k] = v
	}
	out[key] = value
	return out
}

// countingTransport counts the requests it passes on.
type countingTransport struct{ n atomic.Int32 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

func TestUnknownKidRefetchesTheJWKS(t *testing.T) {
	st := integration.Shared(t)
	_, raw := deviceToken(t, st)
	_, later := deviceToken(t, st) // first seen after the JWKS went stale
	claims, _ := unverifiedClaims(t, raw)
	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	unknown := resign(t, jwt.SigningMethodRS256, forger, "rotated-key-"+randomKey(), claims)

	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	ct := &countingTransport{}
	cfg := verifierConfig(st)
	cfg.HTTPClient = &http.Client{Transport: ct}
	cfg.Now = clock
	cfg.RefreshInterval = 10 * time.Second
	v := newVerifier(t, cfg)

	steps := []struct {
		name        string
		advance     time.Duration
		raw         string
		wantErr     bool
		wantFetches int32
	}{
		{"first token fetches the JWKS", 0, raw, false, 1},
		{"a known kid is served from the cache", 0, raw, false, 1},
		{"an unknown kid refetches", 11 * time.Second, unknown, true, 2},
		{"again within the rate limit: no refetch", 2 * time.Second, unknown, true, 2},
		{"the known kid still works meanwhile", 0, raw, false, 2},
		{"after the rate limit: refetch", 9 * time.Second, unknown, true, 3},
	}
	for _, s := range steps {
		advance(s.advance)
		_, err := v.VerifyDevice(t.Context(), s.raw)
		if s.wantErr != (err != nil) || (err != nil && !errors.Is(err, model.ErrUnauthenticated)) {
			t.Errorf("%s: got error %v, want error %v (ErrUnauthenticated)", s.name, err, s.wantErr)
		}
		if got := ct.n.Load(); got != s.wantFetches {
			t.Errorf("%s: %d JWKS fetches, want %d", s.name, got, s.wantFetches)
		}
	}

	// A cache older than MaxKeyAge is refreshed on the next token whose
	// signature must be checked; a token verified before is only checked
	// for expiry.
	advance(2 * time.Hour)
	if _, err := v.VerifyDevice(t.Context(), raw); err == nil || !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyDevice of a remembered token two hours later: got %v, want ErrUnauthenticated (expired)", err)
	}
	if got := ct.n.Load(); got != 3 {
		t.Errorf("an expired remembered token fetched the JWKS: %d fetches, want 3", got)
	}
	if _, err := v.VerifyDevice(t.Context(), later); err == nil || !errors.Is(err, model.ErrUnauthenticated) {
		// The token itself expired two hours ago.
		t.Errorf("VerifyDevice two hours later: got %v, want ErrUnauthenticated (expired)", err)
	}
	if got := ct.n.Load(); got != 4 {
		t.Errorf("a stale JWKS: %d fetches, want 4", got)
	}
}

func TestJWKSUnreachable(t *testing.T) {
	st := integration.Shared(t)
	_, raw := deviceToken(t, st)
	op := mustToken(t, st, st.OperatorClientID, st.OperatorClientSecret)
	cfg := verifierConfig(st)
	cfg.JWKSURL = closedURL(t) + "/certs"
	v := newVerifier(t, cfg)

	_, err := v.VerifyDevice(t.Context(), raw)
	var ue *model.UnavailableError
	if !errors.As(err, &ue) || ue.Service != "keycloak" || errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyDevice with the JWKS unreachable: got %v, want a keycloak *model.UnavailableError", err)
	}
	// Within the refresh interval the outcome stays "unavailable".
	if _, err := v.VerifyAdmin(t.Context(), op); !errors.Is(err, model.ErrUnavailable) {
		t.Errorf("VerifyAdmin with the JWKS unreachable: got %v, want ErrUnavailable", err)
	}
	// What can be refused without keys still is.
	if _, err := v.VerifyDevice(t.Context(), "garbage"); !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyDevice(garbage) with the JWKS unreachable: got %v, want ErrUnauthenticated", err)
	}
}

func TestNewVerifierChecksItsConfig(t *testing.T) {
	good := keycloak.VerifierConfig{IssuerURL: "http://127.0.0.1:1/realms/iot", DeviceAudience: "aud"}
	if _, err := keycloak.NewVerifier(good); err != nil {
		t.Fatalf("NewVerifier(good): %v", err)
	}
	tests := []struct {
		name   string
		change func(*keycloak.VerifierConfig)
	}{
		{"no issuer", func(c *keycloak.VerifierConfig) { c.IssuerURL = "" }},
		{"issuer not http", func(c *keycloak.VerifierConfig) { c.IssuerURL = "realms/iot" }},
		{"JWKS not http", func(c *keycloak.VerifierConfig) { c.JWKSURL = "file:///etc/passwd" }},
		{"no audience", func(c *keycloak.VerifierConfig) { c.DeviceAudience = "" }},
		{"negative leeway", func(c *keycloak.VerifierConfig) { c.Leeway = -time.Second }},
		{"huge leeway", func(c *keycloak.VerifierConfig) { c.Leeway = time.Hour }},
	}
	for _, tt := range tests {
		cfg := good
		tt.change(&cfg)
		if _, err := keycloak.NewVerifier(cfg); err == nil {
			t.Errorf("NewVerifier(%s): got no error", tt.name)
		}
	}
}

// The realm's JWKS also lists an encryption key: only signing keys are used.
func TestVerifierIgnoresTheEncryptionKey(t *testing.T) {
	st := integration.Shared(t)
	_, raw := deviceToken(t, st)
	claims, _ := unverifiedClaims(t, raw)
	code, body := getJSON(t, st.IssuerURL+"/protocol/openid-connect/certs")
	if code != http.StatusOK {
		t.Fatalf("JWKS: HTTP %d", code)
	}
	var encKid string
	for _, k := range body["keys"].([]any) {
		k := k.(map[string]any)
		if k["use"] == "enc" {
			encKid, _ = k["kid"].(string)
		}
	}
	if encKid == "" {
		t.Fatalf("the realm's JWKS has no encryption key; this test needs one")
	}
	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	forged := resign(t, jwt.SigningMethodRS256, forger, encKid, claims)
	_, err = newVerifier(t, verifierConfig(st)).VerifyDevice(t.Context(), forged)
	if !errors.Is(err, model.ErrUnauthenticated) || !strings.Contains(err.Error(), "unknown signing key") {
		t.Errorf("a token naming the encryption key: got %v, want ErrUnauthenticated for an unknown signing key", err)
	}
}
