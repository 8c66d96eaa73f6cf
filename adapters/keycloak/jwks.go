package keycloak

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// maxJWKS bounds a JWKS document.
const maxJWKS = 1 << 20

// minRSABits is the smallest RSA modulus accepted.
const minRSABits = 2048

// jwk is one JSON Web Key (RFC 7517) as a JWKS lists it.
type jwk struct {
	Kid string `json:"kid"`
	Kty string `json:"kty"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// sigKey is a verification key and the one algorithm it verifies.
type sigKey struct {
	alg string // "RS256" or "ES256"
	key crypto.PublicKey
}

// parseJWKS returns the usable signing keys of a JWKS by kid: RS256 (RSA
// of at least 2048 bits) and ES256 (P-256) keys whose use is "sig". Other
// keys (encryption keys, other algorithms, malformed ones) are skipped; a
// document that is not a JWKS is an error.
func parseJWKS(data []byte) (map[string]sigKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, errors.New("JWKS is not a JSON object")
	}
	if doc.Keys == nil {
		return nil, errors.New("JWKS has no keys member")
	}
	keys := map[string]sigKey{}
	for _, raw := range doc.Keys {
		var k jwk
		if json.Unmarshal(raw, &k) != nil || k.Kid == "" || k.Use != "sig" {
			continue
		}
		if _, dup := keys[k.Kid]; dup {
			// Two keys under one kid: trust neither.
			keys[k.Kid] = sigKey{}
			continue
		}
		if sk, ok := k.sigKey(); ok {
			keys[k.Kid] = sk
		}
	}
	for kid, k := range keys {
		if k.key == nil {
			delete(keys, kid)
		}
	}
	return keys, nil
}

func (k jwk) sigKey() (sigKey, bool) {
	switch {
	case k.Kty == "RSA" && (k.Alg == "RS256" || k.Alg == ""):
		n, ok1 := b64uint(k.N)
		e, ok2 := b64uint(k.E)
		if !ok1 || !ok2 || n.BitLen() < minRSABits || !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 || e.Bit(0) == 0 {
			return sigKey{}, false
		}
		return sigKey{alg: "RS256", key: &rsa.PublicKey{N: n, E: int(e.Int64())}}, true
	case k.Kty == "EC" && k.Crv == "P-256" && (k.Alg == "ES256" || k.Alg == ""):
		x, err1 := base64.RawURLEncoding.DecodeString(k.X)
		y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
		if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
			return sigKey{}, false
		}
		// ParseUncompressedPublicKey rejects points off the curve.
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return sigKey{}, false
		}
		return sigKey{alg: "ES256", key: pub}, true
	}
	return sigKey{}, false
}

// b64uint decodes a base64url (unpadded) big-endian unsigned integer.
func b64uint(s string) (*big.Int, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 || len(b) > 1024 {
		return nil, false
	}
	return new(big.Int).SetBytes(b), true
}

// keySet caches a JWKS. A kid that is not cached triggers a refetch, at most
// once per minInterval; the whole set is refetched when older than maxAge.
type keySet struct {
	url         string
	http        *http.Client
	timeout     time.Duration
	minInterval time.Duration
	maxAge      time.Duration
	now         func() time.Time

	mu        sync.RWMutex
	keys      map[string]sigKey
	fetchedAt time.Time // last successful fetch

	fetchMu     sync.Mutex // one fetch at a time
	lastAttempt time.Time
	lastErr     error // of the last attempt
}

// key returns the key of kid. It returns a model.ErrUnavailable error when
// the JWKS cannot be fetched and no cached key answers.
func (s *keySet) key(ctx context.Context, kid string) (sigKey, error) {
	s.mu.RLock()
	k, ok := s.keys[kid]
	stale := s.now().Sub(s.fetchedAt) > s.maxAge
	s.mu.RUnlock()
	if ok && !stale {
		return k, nil
	}

	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	// Another caller may have fetched while this one waited.
	s.mu.RLock()
	k, ok = s.keys[kid]
	stale = s.now().Sub(s.fetchedAt) > s.maxAge
	s.mu.RUnlock()
	if ok && !stale {
		return k, nil
	}
	if !s.lastAttempt.IsZero() && s.now().Sub(s.lastAttempt) < s.minInterval {
		switch {
		case ok: // stale but refetched recently: keep using it
			return k, nil
		case s.lastErr != nil:
			return sigKey{}, s.lastErr
		}
		return sigKey{}, errUnknownKey
	}
	err := s.refresh(ctx)
	s.mu.RLock()
	k, ok = s.keys[kid]
	s.mu.RUnlock()
	switch {
	case ok:
		return k, nil // a failed refresh keeps the cached keys
	case err != nil:
		return sigKey{}, err
	}
	return sigKey{}, errUnknownKey
}

// errUnknownKey: the token names a key the issuer does not publish.
var errUnknownKey = errors.New("unknown signing key")

// refresh fetches the JWKS; the caller holds fetchMu.
func (s *keySet) refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	keys, err := s.fetch(ctx)
	if err != nil && errors.Is(err, context.Canceled) {
		// The caller gave up: not the issuer's fault, do not hold it
		// against the next caller.
		return err
	}
	s.lastAttempt = s.now()
	s.lastErr = err
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.keys = keys
	s.fetchedAt = s.lastAttempt
	s.mu.Unlock()
	return nil
}

func (s *keySet) fetch(ctx context.Context) (map[string]sigKey, error) {
	fail := func(err error) error {
		return &model.UnavailableError{Service: service, Err: fmt.Errorf("fetch JWKS: %w", err)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, fail(err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fail(fmt.Errorf("HTTP %d", resp.StatusCode))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKS+1))
	if err != nil {
		return nil, fail(err)
	}
	if len(data) > maxJWKS {
		return nil, fail(fmt.Errorf("larger than %d bytes", maxJWKS))
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return nil, fail(err)
	}
	return keys, nil
}
