package keycloak

// These tests exercise the token checks with keys of their own (ES256
// included, which the test realm does not sign with), loaded straight into
// the verifier's key cache: no network, so they are also what the fuzz
// target runs on. The tests against the real Keycloak are in
// verifier_test.go.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/espmdm/espmdm/core/model"
)

const (
	testIssuer   = "https://kc.example/realms/iot"
	testAudience = "espmdm-iot"
	testDevice   = "iotdevice-esp32_c3-k3y12345"
)

// testKeys are signing keys the offline verifier trusts.
type testKeys struct {
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
}

func newTestKeys(t testing.TB) testKeys {
	t.Helper()
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testKeys{rsa: r, ec: e}
}

// offlineVerifier trusts k's keys ("rsa-1" for RS256, "ec-1" for ES256) and
// never fetches: its JWKS URL is unroutable and the cache counts as fresh.
func offlineVerifier(t testing.TB, k testKeys, now time.Time, change func(*VerifierConfig)) *Verifier {
	t.Helper()
	cfg := VerifierConfig{
		IssuerURL:      testIssuer,
		JWKSURL:        "http://127.0.0.1:1/certs",
		DeviceAudience: testAudience,
		Now:            func() time.Time { return now },
		MaxKeyAge:      24 * time.Hour,
	}
	if change != nil {
		change(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v.keys.keys = map[string]sigKey{
		"rsa-1": {alg: "RS256", key: &k.rsa.PublicKey},
		"ec-1":  {alg: "ES256", key: &k.ec.PublicKey},
	}
	v.keys.fetchedAt = now
	v.keys.lastAttempt = now
	return v
}

// sign makes a token; alg picks the key ("RS256": rsa-1, "ES256": ec-1).
func (k testKeys) sign(t testing.TB, alg string, header map[string]any, claims jwt.MapClaims) string {
	t.Helper()
	var tok *jwt.Token
	var key any
	switch alg {
	case "RS256":
		tok, key = jwt.NewWithClaims(jwt.SigningMethodRS256, claims), k.rsa
		tok.Header["kid"] = "rsa-1"
	case "ES256":
		tok, key = jwt.NewWithClaims(jwt.SigningMethodES256, claims), k.ec
		tok.Header["kid"] = "ec-1"
	}
	for h, v := range header {
		tok.Header[h] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func deviceClaims(now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": testIssuer, "aud": []string{"account", testAudience}, "azp": testDevice, "typ": "Bearer",
		"sub": "0b5e5f5c-1111-2222-3333-444455556666",
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		"realm_access": map[string]any{"roles": []string{"iotdevice"}},
	}
}

func with(c jwt.MapClaims, kv ...any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

func TestVerifyDeviceOffline(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := newTestKeys(t)
	v := offlineVerifier(t, k, now, nil)
	base := deviceClaims(now)

	for _, alg := range []string{"RS256", "ES256"} {
		got, err := v.VerifyDevice(t.Context(), k.sign(t, alg, nil, base))
		if err != nil {
			t.Fatalf("VerifyDevice(%s): %v", alg, err)
		}
		want := model.DeviceClaims{ClientID: testDevice, ModelCode: "esp32_c3", Key: "k3y12345",
			IssuedAt: now.UTC(), ExpiresAt: now.Add(5 * time.Minute).UTC()}
		if got != want {
			t.Errorf("VerifyDevice(%s): got %+v, want %+v", alg, got, want)
		}
	}
	// A single-string aud and a missing typ are fine.
	if _, err := v.VerifyDevice(t.Context(), k.sign(t, "RS256", nil, with(base, "aud", testAudience, "typ", nil))); err != nil {
		t.Errorf("VerifyDevice(aud string, no typ): %v", err)
	}

	tests := []struct {
		name   string
		raw    string
		reason string
	}{
		{"ID token", k.sign(t, "RS256", nil, with(base, "typ", "ID")), "not an access token"},
		{"refresh token", k.sign(t, "ES256", nil, with(base, "typ", "Refresh")), "not an access token"},
		{"no exp", k.sign(t, "RS256", nil, with(base, "exp", nil)), "required claim missing"},
		{"no iat", k.sign(t, "RS256", nil, with(base, "iat", nil)), "no iat"},
		{"no aud", k.sign(t, "RS256", nil, with(base, "aud", nil)), "required claim missing"},
		{"only another aud", k.sign(t, "RS256", nil, with(base, "aud", []string{"account"})), "wrong audience"},
		{"nbf beyond the leeway", k.sign(t, "RS256", nil, with(base, "nbf", now.Add(time.Minute).Unix())), "not valid yet"},
		{"no azp", k.sign(t, "RS256", nil, with(base, "azp", nil)), "azp"},
		{"admin azp", k.sign(t, "RS256", nil, with(base, "azp", "espmdm-operator")), "azp"},
		{"azp with a short key", k.sign(t, "RS256", nil, with(base, "azp", "iotdevice-m-abc")), "azp"},
		{"azp with a suffix", k.sign(t, "RS256", nil, with(base, "azp", testDevice+"\n")), "azp"},
		{"azp upper case", k.sign(t, "RS256", nil, with(base, "azp", strings.ToUpper(testDevice))), "azp"},
		{"azp a number", k.sign(t, "RS256", nil, with(base, "azp", 7)), "malformed"},
		{"issuer with a suffix", k.sign(t, "RS256", nil, with(base, "iss", testIssuer+"x")), "wrong issuer"},
		{"RS256 header on the EC key", k.sign(t, "RS256", map[string]any{"kid": "ec-1"}, base), "algorithm does not match"},
		{"ES256 header on the RSA key", k.sign(t, "ES256", map[string]any{"kid": "rsa-1"}, base), "algorithm does not match"},
		{"kid not a string", k.sign(t, "RS256", map[string]any{"kid": 1}, base), "no key id"},
	}
	for _, tt := range tests {
		_, err := v.VerifyDevice(t.Context(), tt.raw)
		if !errors.Is(err, model.ErrUnauthenticated) || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("VerifyDevice(%s): got %v, want ErrUnauthenticated for %q", tt.name, err, tt.reason)
		}
	}
}

func TestVerifyAdminOffline(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	k := newTestKeys(t)
	admin := jwt.MapClaims{
		"iss": testIssuer, "azp": "espmdm-operator", "sub": "u-1", "typ": "Bearer",
		"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
		"realm_access": map[string]any{"roles": []string{"mdm-admin", "offline_access"}},
	}
	v := offlineVerifier(t, k, now, nil)
	p, err := v.VerifyAdmin(t.Context(), k.sign(t, "ES256", nil, admin))
	if err != nil {
		t.Fatalf("VerifyAdmin: %v", err)
	}
	if p.Subject != "u-1" || p.ClientID != "espmdm-operator" || !p.HasRole("mdm-admin") || len(p.Roles) != 2 {
		t.Errorf("VerifyAdmin: got %+v", p)
	}
	if p, err := v.VerifyAdmin(t.Context(), k.sign(t, "RS256", nil, with(admin, "realm_access", nil))); err != nil || len(p.Roles) != 0 {
		t.Errorf("VerifyAdmin(no realm_access): got %+v, %v; want no roles", p, err)
	}

	for name, raw := range map[string]string{
		"device token":              k.sign(t, "RS256", nil, deviceClaims(now)),
		"device azp in other case":  k.sign(t, "RS256", nil, with(admin, "azp", "IotDevice-x")),
		"expired":                   k.sign(t, "RS256", nil, with(admin, "exp", now.Add(-time.Minute).Unix())),
		"ID token":                  k.sign(t, "RS256", nil, with(admin, "typ", "ID")),
		"roles of the wrong type":   k.sign(t, "RS256", nil, with(admin, "realm_access", map[string]any{"roles": "mdm-admin"})),
		"realm_access not a object": k.sign(t, "RS256", nil, with(admin, "realm_access", []string{"mdm-admin"})),
	} {
		if _, err := v.VerifyAdmin(t.Context(), raw); !errors.Is(err, model.ErrUnauthenticated) {
			t.Errorf("VerifyAdmin(%s): got %v, want ErrUnauthenticated", name, err)
		}
	}

	withAud := offlineVerifier(t, k, now, func(c *VerifierConfig) { c.AdminAudience = "mdm-api" })
	if _, err := withAud.VerifyAdmin(t.Context(), k.sign(t, "RS256", nil, with(admin, "aud", "mdm-api"))); err != nil {
		t.Errorf("VerifyAdmin with the admin audience: %v", err)
	}
	if _, err := withAud.VerifyAdmin(t.Context(), k.sign(t, "RS256", nil, admin)); !errors.Is(err, model.ErrUnauthenticated) {
		t.Errorf("VerifyAdmin without the admin audience: got %v, want ErrUnauthenticated", err)
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(kid, alg, use string, pub *rsa.PublicKey) map[string]any {
	return map[string]any{"kid": kid, "kty": "RSA", "alg": alg, "use": use,
		"n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes())}
}

func ecJWK(kid string, pub *ecdsa.PublicKey) map[string]any {
	b, err := pub.Bytes() // 0x04 || x || y
	if err != nil {
		panic(err)
	}
	n := (len(b) - 1) / 2
	return map[string]any{"kid": kid, "kty": "EC", "alg": "ES256", "use": "sig", "crv": pub.Curve.Params().Name,
		"x": b64(b[1 : 1+n]), "y": b64(b[1+n:])}
}

func TestParseJWKS(t *testing.T) {
	k := newTestKeys(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	offCurve := ecJWK("ec-off", &k.ec.PublicKey)
	y, _ := base64.RawURLEncoding.DecodeString(offCurve["y"].(string))
	y[31] ^= 1
	offCurve["y"] = b64(y)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384JWK := ecJWK("ec-384", &p384.PublicKey)

	keys := []any{
		rsaJWK("rsa-sig", "RS256", "sig", &k.rsa.PublicKey),
		rsaJWK("rsa-noalg", "", "sig", &k.rsa.PublicKey),
		rsaJWK("rsa-enc", "RSA-OAEP", "enc", &k.rsa.PublicKey),
		rsaJWK("rsa-nouse", "RS256", "", &k.rsa.PublicKey),
		rsaJWK("rsa-ps256", "PS256", "sig", &k.rsa.PublicKey),
		rsaJWK("rsa-small", "RS256", "sig", &small.PublicKey),
		rsaJWK("dup", "RS256", "sig", &k.rsa.PublicKey),
		ecJWK("dup", &k.ec.PublicKey),
		ecJWK("ec-sig", &k.ec.PublicKey),
		offCurve,
		p384JWK,
		map[string]any{"kid": "rsa-bad-e", "kty": "RSA", "alg": "RS256", "use": "sig", "n": b64(k.rsa.N.Bytes()), "e": b64([]byte{2})},
		map[string]any{"kid": "rsa-bad-n", "kty": "RSA", "alg": "RS256", "use": "sig", "n": "!!", "e": "AQAB"},
		map[string]any{"kty": "RSA", "alg": "RS256", "use": "sig", "n": b64(k.rsa.N.Bytes()), "e": "AQAB"},
		map[string]any{"kid": "oct", "kty": "oct", "alg": "HS256", "use": "sig", "k": "c2VjcmV0"},
		"not an object",
	}
	doc, _ := json.Marshal(map[string]any{"keys": keys})
	got, err := parseJWKS(doc)
	if err != nil {
		t.Fatalf("parseJWKS: %v", err)
	}
	want := map[string]string{"rsa-sig": "RS256", "rsa-noalg": "RS256", "ec-sig": "ES256"}
	if len(got) != len(want) {
		t.Errorf("parseJWKS kept %d keys, want %d (%v)", len(got), len(want), keyNames(got))
	}
	for kid, alg := range want {
		if got[kid].alg != alg {
			t.Errorf("key %s: alg %q, want %q", kid, got[kid].alg, alg)
		}
	}

	for _, bad := range []string{``, `null`, `[]`, `{}`, `{"keys":{}}`, `{"keys":"x"}`} {
		if _, err := parseJWKS([]byte(bad)); err == nil {
			t.Errorf("parseJWKS(%q): got no error", bad)
		}
	}
	if got, err := parseJWKS([]byte(`{"keys":[]}`)); err != nil || len(got) != 0 {
		t.Errorf("parseJWKS(no keys): got %v, %v", got, err)
	}
}

func keyNames(m map[string]sigKey) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// FuzzVerifyToken feeds arbitrary strings to both checks: they never panic,
// every refusal is ErrUnauthenticated (the keys are cached, so nothing is
// unavailable) without quoting the token, and whatever passes really is a
// well-formed device token or a non-device admin token.
func FuzzVerifyToken(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	k := newTestKeys(f)
	v := offlineVerifier(f, k, now, nil)
	dev := deviceClaims(now)
	f.Add(k.sign(f, "RS256", nil, dev))
	f.Add(k.sign(f, "ES256", nil, dev))
	f.Add(k.sign(f, "RS256", nil, with(dev, "azp", "espmdm-operator", "aud", nil)))
	f.Add(k.sign(f, "ES256", nil, with(dev, "typ", "ID", "nbf", now.Unix())))
	f.Add(k.sign(f, "RS256", map[string]any{"kid": "unknown"}, dev))
	f.Add(b64([]byte(`{"alg":"none","kid":"rsa-1"}`)) + "." + b64([]byte(`{"exp":1e309}`)) + ".")
	f.Add(b64([]byte(`{"alg":"HS256","kid":"rsa-1"}`)) + "." + b64([]byte(`{"aud":[1,2]}`)) + ".c2ln")
	f.Add("a.b.c")
	f.Add("")
	f.Add("....")
	f.Fuzz(func(t *testing.T, raw string) {
		dc, err := v.VerifyDevice(t.Context(), raw)
		if err == nil {
			if code, key, ok := model.ParseClientID(dc.ClientID); !ok || code != dc.ModelCode || key != dc.Key || dc.IssuedAt.IsZero() {
				t.Fatalf("VerifyDevice accepted claims %+v", dc)
			}
		} else {
			checkRefusal(t, "VerifyDevice", raw, err)
		}
		p, err := v.VerifyAdmin(t.Context(), raw)
		if err == nil {
			if strings.HasPrefix(strings.ToLower(p.ClientID), model.ClientIDPrefix) {
				t.Fatalf("VerifyAdmin accepted a device token: %+v", p)
			}
		} else {
			checkRefusal(t, "VerifyAdmin", raw, err)
		}
	})
}

func checkRefusal(t *testing.T, what, raw string, err error) {
	t.Helper()
	if !errors.Is(err, model.ErrUnauthenticated) || errors.Is(err, model.ErrUnavailable) {
		t.Fatalf("%s: got %v, want only ErrUnauthenticated", what, err)
	}
	if len(raw) >= 12 && strings.Contains(err.Error(), raw) {
		t.Fatalf("%s: error quotes the token: %v", what, err)
	}
}

// FuzzParseJWKS checks that any document either fails or yields only keys
// of the two accepted algorithms.
func FuzzParseJWKS(f *testing.F) {
	k := newTestKeys(f)
	doc, _ := json.Marshal(map[string]any{"keys": []any{
		rsaJWK("r", "RS256", "sig", &k.rsa.PublicKey), ecJWK("e", &k.ec.PublicKey),
		rsaJWK("x", "RSA-OAEP", "enc", &k.rsa.PublicKey),
	}})
	f.Add(doc)
	f.Add([]byte(`{"keys":[{"kid":"a","kty":"EC","crv":"P-256","use":"sig","x":"","y":""}]}`))
	f.Add([]byte(`{"keys":[{"kid":"a","kty":"RSA","use":"sig","n":"AQAB","e":"AQAB"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := parseJWKS(data)
		if err != nil {
			return
		}
		for kid, sk := range keys {
			switch key := sk.key.(type) {
			case *rsa.PublicKey:
				if sk.alg != "RS256" || key.N.BitLen() < minRSABits {
					t.Fatalf("key %q: %s RSA key of %d bits", kid, sk.alg, key.N.BitLen())
				}
			case *ecdsa.PublicKey:
				if sk.alg != "ES256" || key.Curve != elliptic.P256() {
					t.Fatalf("key %q: %s EC key", kid, sk.alg)
				}
			default:
				t.Fatalf("key %q: %T", kid, key)
			}
		}
	})
}

// TestVerifiedTokensAreRemembered: a token accepted once is accepted again
// without its signature being checked (the cache holds it), still expires
// on time, is kept apart per parser (a device token does not become an
// admin one), and a refused token is not remembered.
func TestVerifiedTokensAreRemembered(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	now := start
	k := newTestKeys(t)
	v := offlineVerifier(t, k, start, func(c *VerifierConfig) {
		c.Now = func() time.Time { return now }
		c.Leeway = time.Second
	})
	tok := k.sign(t, "RS256", nil, deviceClaims(start))
	first, err := v.VerifyDevice(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if n := v.verified.len(); n != 1 {
		t.Fatalf("after one accepted token the cache holds %d, want 1", n)
	}
	// Without the keys, only the cache can accept it.
	v.keys.keys = map[string]sigKey{}
	again, err := v.VerifyDevice(t.Context(), tok)
	if err != nil || again != first {
		t.Fatalf("second verification = %+v, %v; want %+v from the cache", again, err, first)
	}
	if _, err := v.VerifyAdmin(t.Context(), tok); err == nil {
		t.Error("a device token remembered by the device parser was accepted as an admin token")
	}
	forged := k.sign(t, "RS256", nil, with(deviceClaims(start), "aud", "someone-else"))
	if _, err := v.VerifyDevice(t.Context(), forged); err == nil {
		t.Fatal("wrong audience accepted")
	}
	if n := v.verified.len(); n != 1 {
		t.Errorf("a refused token changed the cache to %d entries", n)
	}
	now = start.Add(5*time.Minute + time.Second) // exp + leeway
	if _, err := v.VerifyDevice(t.Context(), tok); !errors.Is(err, model.ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("remembered token after exp + leeway = %v, want expired", err)
	}
	if n := v.verified.len(); n != 0 {
		t.Errorf("an expired token stays in the cache (%d entries)", n)
	}
}

func TestVerifiedCacheIsBounded(t *testing.T) {
	c := newVerifiedCache(3)
	exp := jwt.NewNumericDate(time.Unix(1_800_000_000, 0))
	for i := range 10 {
		c.put(cacheKey(false, string(rune('a'+i))), &claims{RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: exp}})
		if n := c.len(); n > 3 {
			t.Fatalf("cache of 3 holds %d", n)
		}
	}
	c.put(cacheKey(false, "no exp"), &claims{})
	if _, ok := c.get(cacheKey(false, "no exp")); ok {
		t.Error("claims without exp were cached")
	}
}
