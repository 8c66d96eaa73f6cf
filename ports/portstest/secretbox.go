package portstest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"

	"github.com/espmdm/espmdm/ports"
)

// SecretBox is a ports.SecretBox sealing with AES-256-GCM under a random
// per-instance key: real enough that sealed bytes never show the plaintext.
type SecretBox struct {
	aead cipher.AEAD
}

var _ ports.SecretBox = (*SecretBox)(nil)

// NewSecretBox returns a SecretBox with a fresh random key.
func NewSecretBox() *SecretBox {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return &SecretBox{aead: aead}
}

// Seal implements ports.SecretBox: nonce || ciphertext.
func (b *SecretBox) Seal(plaintext []byte) ([]byte, error) {
	nonce := make([]byte, b.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return b.aead.Seal(nonce, nonce, plaintext, nil), nil
}

// Open implements ports.SecretBox.
func (b *SecretBox) Open(sealed []byte) ([]byte, error) {
	n := b.aead.NonceSize()
	if len(sealed) < n+b.aead.Overhead() {
		return nil, errors.New("secretbox: sealed value too short")
	}
	out, err := b.aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		return nil, errors.New("secretbox: cannot open sealed value")
	}
	return out, nil
}
