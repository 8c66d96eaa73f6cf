// Package secretbox implements ports.SecretBox with AES-256-GCM.
//
// A sealed value is
//
//	version (1 byte, 0x01) | nonce (12 random bytes) | ciphertext | tag (16 bytes)
//
// and the version byte is also authenticated as additional data. Opening a
// value that was truncated, altered, or sealed under another key fails with
// ErrOpen; no error ever contains key material or plaintext.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/espmdm/espmdm/ports"
)

// KeySize is the key length: AES-256.
const KeySize = 32

const (
	version1  byte = 0x01
	nonceSize      = 12
	tagSize        = 16
	overhead       = 1 + nonceSize + tagSize
)

// ErrOpen is returned (wrapped) for a sealed value that cannot be opened.
var ErrOpen = errors.New("secretbox: cannot open sealed value")

// Box seals and opens secrets under one key. It is safe for concurrent use.
type Box struct {
	aead cipher.AEAD
}

var _ ports.SecretBox = (*Box)(nil)

// New returns a Box for a 32-byte key. The key is copied into the cipher's
// state; the caller may wipe its slice afterwards.
func New(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secretbox: key must be %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secretbox: %w", err)
	}
	aead, err := cipher.NewGCMWithNonceSize(block, nonceSize)
	if err != nil {
		return nil, fmt.Errorf("secretbox: %w", err)
	}
	return &Box{aead: aead}, nil
}

// ParseKey decodes a key given as text (SECRET_KEY): 64 hex digits, or the
// base64 (standard or URL alphabet, padded or not) of 32 bytes. Surrounding
// white space is ignored. The error describes the expected form and never
// repeats the value.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("secretbox: the key is empty; want 64 hex characters or base64 of 32 bytes (e.g. `openssl rand -hex 32`)")
	}
	if len(s) == 2*KeySize {
		if k, err := hex.DecodeString(s); err == nil {
			return k, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) == KeySize {
			return k, nil
		}
	}
	return nil, fmt.Errorf("secretbox: the key (%d characters, value withheld) is neither 64 hex characters nor base64 of 32 bytes (e.g. `openssl rand -hex 32`)", len(s))
}

// NewFromString is ParseKey followed by New.
func NewFromString(s string) (*Box, error) {
	k, err := ParseKey(s)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	return New(k)
}

// Seal encrypts plaintext under a fresh random nonce.
func (b *Box) Seal(plaintext []byte) ([]byte, error) {
	out := make([]byte, 1+nonceSize, overhead+len(plaintext))
	out[0] = version1
	if _, err := rand.Read(out[1 : 1+nonceSize]); err != nil {
		return nil, fmt.Errorf("secretbox: nonce: %w", err)
	}
	return b.aead.Seal(out, out[1:1+nonceSize], plaintext, out[:1]), nil
}

// Open decrypts a value made by Seal. A value that is too short, of an
// unknown version, altered, or sealed under another key is an error
// wrapping ErrOpen.
func (b *Box) Open(sealed []byte) ([]byte, error) {
	if len(sealed) < overhead {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrOpen, len(sealed))
	}
	if sealed[0] != version1 {
		return nil, fmt.Errorf("%w: unknown format version %d", ErrOpen, sealed[0])
	}
	plain, err := b.aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], sealed[:1])
	if err != nil {
		return nil, fmt.Errorf("%w: altered, or sealed under another key", ErrOpen)
	}
	if plain == nil {
		plain = []byte{}
	}
	return plain, nil
}

// String hides the key from formatted output.
func (b *Box) String() string { return "secretbox.Box(AES-256-GCM)" }

// GoString hides the key from %#v.
func (b *Box) GoString() string { return b.String() }

// Ring seals under its current Box and opens values sealed under the
// current or any previous one (SECRET_KEY and SECRET_KEY_PREVIOUS), so a
// key change never strands a secret sealed before it. It is safe for
// concurrent use.
type Ring struct {
	current  *Box
	previous []*Box
}

var _ ports.SecretBox = (*Ring)(nil)

// NewRing returns a Ring sealing under current and also opening with each
// of previous (nil entries are skipped).
func NewRing(current *Box, previous ...*Box) *Ring {
	r := &Ring{current: current}
	for _, p := range previous {
		if p != nil {
			r.previous = append(r.previous, p)
		}
	}
	return r
}

// Seal seals under the current key.
func (r *Ring) Seal(plaintext []byte) ([]byte, error) { return r.current.Seal(plaintext) }

// Open opens a value sealed under the current key or a previous one.
func (r *Ring) Open(sealed []byte) ([]byte, error) {
	plain, err := r.current.Open(sealed)
	if err == nil {
		return plain, nil
	}
	for _, p := range r.previous {
		if plain, perr := p.Open(sealed); perr == nil {
			return plain, nil
		}
	}
	return nil, err
}

// String hides the keys from formatted output.
func (r *Ring) String() string {
	return fmt.Sprintf("secretbox.Ring(AES-256-GCM, %d previous)", len(r.previous))
}

// GoString hides the keys from %#v.
func (r *Ring) GoString() string { return r.String() }
