package keycloak

import (
	"crypto/sha256"
	"sync"
)

// verifiedCacheSize bounds the tokens a Verifier remembers: at about 400
// bytes an entry, a few MiB.
const verifiedCacheSize = 16384

// verifiedCache maps the SHA-256 of a token (and which parser accepted
// it) to the claims it was accepted with. A token is immutable, so the
// signature, issuer, audience, nbf and iat checks hold for as long as it
// exists; only exp has to be checked again on a hit. Its cost: a token
// signed with a key that Keycloak later withdraws from the JWKS stays
// accepted until it expires (at most the realm's access-token lifespan).
// Only accepted tokens are kept, so a stream of forged ones cannot evict
// anything but expired entries and is verified (and refused) each time.
type verifiedCache struct {
	mu      sync.Mutex
	max     int
	entries map[[sha256.Size + 1]byte]*claims
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{max: max, entries: make(map[[sha256.Size + 1]byte]*claims)}
}

func cacheKey(admin bool, raw string) [sha256.Size + 1]byte {
	var k [sha256.Size + 1]byte
	sum := sha256.Sum256([]byte(raw))
	copy(k[1:], sum[:])
	if admin {
		k[0] = 1
	}
	return k
}

// get returns the claims a token was accepted with. The caller must not
// modify them.
func (c *verifiedCache) get(k [sha256.Size + 1]byte) (*claims, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.entries[k]
	return v, ok
}

func (c *verifiedCache) remove(k [sha256.Size + 1]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, k)
}

// put remembers accepted claims. When full it starts afresh: simpler than
// an LRU, and a refill costs one verification per live token.
func (c *verifiedCache) put(k [sha256.Size + 1]byte, v *claims) {
	if v.ExpiresAt == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		clear(c.entries)
	}
	c.entries[k] = v
}

func (c *verifiedCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
