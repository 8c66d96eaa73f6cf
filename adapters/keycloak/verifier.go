package keycloak

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// VerifierConfig configures Verifier.
type VerifierConfig struct {
	// IssuerURL is the exact iss of accepted tokens, e.g.
	// http://127.0.0.1:18080/realms/iot.
	IssuerURL string
	// JWKSURL defaults to IssuerURL + "/protocol/openid-connect/certs".
	JWKSURL string
	// DeviceAudience must be among a device token's aud.
	DeviceAudience string
	// AdminAudience, when set, must be among an admin token's aud.
	AdminAudience string
	// Leeway is the clock skew allowed on exp, nbf and iat; default (0)
	// 30s, at most 5m.
	Leeway time.Duration
	// RefreshInterval is the least time between two JWKS fetches caused
	// by tokens naming an unknown key; default 10s.
	RefreshInterval time.Duration
	// MaxKeyAge is how long a fetched JWKS is used before it is fetched
	// again; default 1h.
	MaxKeyAge time.Duration
	// Timeout bounds a JWKS fetch; default 10s.
	Timeout time.Duration
	// HTTPClient fetches the JWKS; default a client of its own.
	HTTPClient *http.Client
	// Now tells the time; default time.Now.
	Now func() time.Time
}

// Verifier checks access tokens of the realm against its JWKS. It is safe
// for concurrent use.
type Verifier struct {
	device *jwt.Parser
	admin  *jwt.Parser
	keys   *keySet
	// verified remembers tokens whose signature and claims were checked,
	// so a device reusing its token skips the RSA verification.
	verified *verifiedCache
	leeway   time.Duration
	now      func() time.Time
}

var _ ports.TokenVerifier = (*Verifier)(nil)

// maxTokenLen bounds the tokens the verifier looks at.
const maxTokenLen = 32 << 10

// NewVerifier checks cfg and returns a Verifier. It fetches the JWKS lazily,
// on the first token.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if _, err := parseBaseURL(cfg.IssuerURL); err != nil {
		return nil, fmt.Errorf("keycloak: issuer URL %q is not an http(s) URL", cfg.IssuerURL)
	}
	if cfg.JWKSURL == "" {
		cfg.JWKSURL = strings.TrimSuffix(cfg.IssuerURL, "/") + "/protocol/openid-connect/certs"
	}
	if u, err := url.Parse(cfg.JWKSURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("keycloak: JWKS URL %q is not an http(s) URL", cfg.JWKSURL)
	}
	switch {
	case cfg.DeviceAudience == "":
		return nil, errors.New("keycloak: the device audience is required")
	case cfg.Leeway < 0 || cfg.Leeway > 5*time.Minute:
		return nil, fmt.Errorf("keycloak: leeway %s is not between 0 and 5m", cfg.Leeway)
	case cfg.RefreshInterval < 0 || cfg.MaxKeyAge < 0 || cfg.Timeout < 0:
		return nil, errors.New("keycloak: refresh interval, key age and timeout must not be negative")
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = 10 * time.Second
	}
	if cfg.MaxKeyAge == 0 {
		cfg.MaxKeyAge = time.Hour
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	common := []jwt.ParserOption{
		jwt.WithValidMethods([]string{"RS256", "ES256"}),
		jwt.WithIssuer(cfg.IssuerURL),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(cfg.Now),
	}
	adminOpts := common
	if cfg.AdminAudience != "" {
		adminOpts = append(adminOpts[:len(adminOpts):len(adminOpts)], jwt.WithAudience(cfg.AdminAudience))
	}
	return &Verifier{
		device: jwt.NewParser(append(common[:len(common):len(common)], jwt.WithAudience(cfg.DeviceAudience))...),
		admin:  jwt.NewParser(adminOpts...),
		keys: &keySet{
			url: cfg.JWKSURL, http: cfg.HTTPClient, timeout: cfg.Timeout,
			minInterval: cfg.RefreshInterval, maxAge: cfg.MaxKeyAge, now: cfg.Now,
		},
		verified: newVerifiedCache(verifiedCacheSize),
		leeway:   cfg.Leeway,
		now:      cfg.Now,
	}, nil
}

// claims are the access token claims the verifier reads.
type claims struct {
	jwt.RegisteredClaims
	Typ         string `json:"typ"`
	Azp         string `json:"azp"`
	Username    string `json:"preferred_username"`
	RealmAccess struct {
		Roles []string `json:"roles"`
	} `json:"realm_access"`
}

// VerifyDevice implements ports.TokenVerifier: signature, exact issuer,
// the device audience, exp/nbf/iat within the leeway, typ Bearer when set,
// and an azp that is a device client id.
func (v *Verifier) VerifyDevice(ctx context.Context, raw string) (model.DeviceClaims, error) {
	c, err := v.parse(ctx, v.device, raw)
	if err != nil {
		return model.DeviceClaims{}, fmt.Errorf("device token: %w", err)
	}
	code, key, ok := model.ParseClientID(c.Azp)
	if !ok {
		return model.DeviceClaims{}, denied("device token: azp is not a device client id")
	}
	if c.IssuedAt == nil {
		return model.DeviceClaims{}, denied("device token: no iat")
	}
	return model.DeviceClaims{
		ClientID:  c.Azp,
		ModelCode: code,
		Key:       key,
		IssuedAt:  c.IssuedAt.UTC(),
		ExpiresAt: c.ExpiresAt.UTC(),
	}, nil
}

// VerifyAdmin implements ports.TokenVerifier: signature, exact issuer,
// exp/nbf/iat within the leeway, typ Bearer when set, the admin audience
// when configured, and an azp that is not a device client. The roles are
// the realm roles.
func (v *Verifier) VerifyAdmin(ctx context.Context, raw string) (model.Principal, error) {
	c, err := v.parse(ctx, v.admin, raw)
	if err != nil {
		return model.Principal{}, fmt.Errorf("admin token: %w", err)
	}
	if strings.HasPrefix(strings.ToLower(c.Azp), model.ClientIDPrefix) {
		return model.Principal{}, denied("admin token: a device token")
	}
	return model.Principal{
		Subject:  c.Subject,
		ClientID: c.Azp,
		Username: c.Username,
		Roles:    append([]string(nil), c.RealmAccess.Roles...),
	}, nil
}

func denied(reason string) error {
	return fmt.Errorf("%s: %w", reason, model.ErrUnauthenticated)
}

// parse checks raw with p. Errors say why in a few words (never quoting
// the token) and wrap model.ErrUnauthenticated, or model.ErrUnavailable
// when the JWKS cannot be fetched.
func (v *Verifier) parse(ctx context.Context, p *jwt.Parser, raw string) (*claims, error) {
	if raw == "" {
		return nil, denied("empty token")
	}
	if len(raw) > maxTokenLen {
		return nil, denied("token too long")
	}
	key := cacheKey(p == v.admin, raw)
	if c, ok := v.verified.get(key); ok {
		// Checked before; only time has moved since.
		if !v.now().Before(c.ExpiresAt.Add(v.leeway)) {
			v.verified.remove(key)
			return nil, denied("expired")
		}
		return c, nil
	}
	var c claims
	_, err := p.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, errNoKid
		}
		k, err := v.keys.key(ctx, kid)
		if err != nil {
			return nil, err
		}
		if k.alg != t.Method.Alg() {
			return nil, errAlgMismatch
		}
		return k.key, nil
	})
	if err != nil {
		if errors.Is(err, model.ErrUnavailable) {
			// The JWKS could not be fetched: not the caller's fault.
			var ue *model.UnavailableError
			if errors.As(err, &ue) {
				return nil, ue
			}
			return nil, &model.UnavailableError{Service: service, Err: errors.New("fetch JWKS failed")}
		}
		return nil, denied(reason(err))
	}
	if c.Typ != "" && c.Typ != "Bearer" {
		return nil, denied("not an access token (typ)")
	}
	v.verified.put(key, &c)
	return &c, nil
}

var (
	errNoKid       = errors.New("no kid")
	errAlgMismatch = errors.New("alg does not match the key")
)

// reason names why jwt refused a token.
func reason(err error) string {
	for _, r := range []struct {
		err error
		why string
	}{
		{errNoKid, "no key id"},
		{errUnknownKey, "unknown signing key"},
		{errAlgMismatch, "algorithm does not match the key"},
		{jwt.ErrTokenMalformed, "malformed token"},
		{jwt.ErrTokenSignatureInvalid, "bad signature or algorithm"},
		{jwt.ErrTokenUnverifiable, "unverifiable token"},
		{jwt.ErrTokenExpired, "expired"},
		{jwt.ErrTokenNotValidYet, "not valid yet"},
		{jwt.ErrTokenUsedBeforeIssued, "issued in the future"},
		{jwt.ErrTokenInvalidIssuer, "wrong issuer"},
		{jwt.ErrTokenInvalidAudience, "wrong audience"},
		{jwt.ErrTokenRequiredClaimMissing, "required claim missing"},
		{jwt.ErrInvalidType, "claim of the wrong type"},
	} {
		if errors.Is(err, r.err) {
			return r.why
		}
	}
	return "invalid token"
}
