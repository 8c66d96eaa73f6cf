package secretbox_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/adapters/secretbox"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, secretbox.KeySize)
	_, _ = rand.Read(k)
	return k
}

func newBox(t *testing.T) *secretbox.Box {
	t.Helper()
	b, err := secretbox.New(newKey(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

func TestContract(t *testing.T) {
	portstest.RunSecretBoxContract(t, func(t *testing.T) ports.SecretBox { return newBox(t) })
}

func TestRingContract(t *testing.T) {
	portstest.RunSecretBoxContract(t, func(t *testing.T) ports.SecretBox { return secretbox.NewRing(newBox(t), newBox(t)) })
}

func TestRoundTrip(t *testing.T) {
	box := newBox(t)
	for _, plain := range [][]byte{nil, {}, []byte("x"), []byte("a-keycloak-client-secret-0123456789"), bytes.Repeat([]byte{0xff}, 4096)} {
		sealed, err := box.Seal(plain)
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		if want := 1 + 12 + len(plain) + 16; len(sealed) != want {
			t.Errorf("Seal(%d bytes): %d bytes out, want %d (version+nonce+ciphertext+tag)", len(plain), len(sealed), want)
		}
		if sealed[0] != 0x01 {
			t.Errorf("version byte = %#x, want 0x01", sealed[0])
		}
		got, err := box.Open(sealed)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, plain) || got == nil {
			t.Errorf("Open(Seal(%q)) = %q (nil %v)", plain, got, got == nil)
		}
	}
}

func TestOpenRefusesTamperingAndOtherKeys(t *testing.T) {
	box := newBox(t)
	sealed, err := box.Seal([]byte("top secret"))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":             nil,
		"header only":       sealed[:13],
		"truncated tag":     sealed[:len(sealed)-1],
		"extra byte":        append(bytes.Clone(sealed), 0),
		"version 2":         append([]byte{2}, sealed[1:]...),
		"flipped nonce":     flip(sealed, 5),
		"flipped body":      flip(sealed, 14),
		"flipped tag":       flip(sealed, len(sealed)-1),
		"swapped nonce/tag": append(append([]byte{1}, sealed[len(sealed)-12:]...), sealed[1:len(sealed)-12]...),
	}
	other := newBox(t)
	cases["other key"] = mustSeal(t, other, []byte("top secret"))
	for name, bad := range cases {
		got, err := box.Open(bad)
		if !errors.Is(err, secretbox.ErrOpen) {
			t.Errorf("%s: Open = %q, %v; want an error wrapping ErrOpen", name, got, err)
		}
		if err != nil && strings.Contains(err.Error(), "top secret") {
			t.Errorf("%s: error %q contains the plaintext", name, err)
		}
	}
}

func TestWrongKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 24, 31, 33, 64} {
		if _, err := secretbox.New(make([]byte, n)); err == nil {
			t.Errorf("New(%d-byte key) succeeded, want an error", n)
		}
	}
}

func TestParseKey(t *testing.T) {
	key := newKey(t)
	for name, s := range map[string]string{
		"hex":              hex.EncodeToString(key),
		"upper hex":        strings.ToUpper(hex.EncodeToString(key)),
		"base64":           base64.StdEncoding.EncodeToString(key),
		"raw base64":       base64.RawStdEncoding.EncodeToString(key),
		"url base64":       base64.URLEncoding.EncodeToString(key),
		"raw url base64":   base64.RawURLEncoding.EncodeToString(key),
		"hex with newline": hex.EncodeToString(key) + "\n",
	} {
		got, err := secretbox.ParseKey(s)
		if err != nil || !bytes.Equal(got, key) {
			t.Errorf("%s: ParseKey = %x, %v; want %x", name, got, err, key)
		}
	}

	// Sealed under a key parsed from hex, opened under the same key from
	// base64.
	a, err := secretbox.NewFromString(hex.EncodeToString(key))
	if err != nil {
		t.Fatal(err)
	}
	b, err := secretbox.NewFromString(base64.StdEncoding.EncodeToString(key))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b.Open(mustSeal(t, a, []byte("same key"))); err != nil || string(got) != "same key" {
		t.Errorf("open across key encodings: %q, %v", got, err)
	}
}

func TestParseKeyRefusesBadKeysWithoutEchoingThem(t *testing.T) {
	for name, s := range map[string]string{
		"empty":           "",
		"blank":           "   ",
		"short hex":       strings.Repeat("ab", 31),
		"long hex":        strings.Repeat("ab", 33),
		"hex with a g":    strings.Repeat("ab", 31) + "gg",
		"base64 16 bytes": base64.StdEncoding.EncodeToString([]byte("sixteen-byte-key")),
		"base64 33 bytes": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("k"), 33)),
		"passphrase":      "correct horse battery staple secret",
	} {
		_, err := secretbox.ParseKey(s)
		if err == nil {
			t.Errorf("%s: ParseKey succeeded, want an error", name)
			continue
		}
		if v := strings.TrimSpace(s); len(v) > 3 && strings.Contains(err.Error(), v) {
			t.Errorf("%s: error %q echoes the value", name, err)
		}
		if _, err := secretbox.NewFromString(s); err == nil {
			t.Errorf("%s: NewFromString succeeded", name)
		}
	}
}

func TestFormattingHidesTheKey(t *testing.T) {
	box := newBox(t)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if got := fmt.Sprintf(verb, box); got != "secretbox.Box(AES-256-GCM)" {
			t.Errorf("Sprintf(%q, box) = %q", verb, got)
		}
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x80
	return c
}

func mustSeal(t *testing.T, b *secretbox.Box, plain []byte) []byte {
	t.Helper()
	s, err := b.Seal(plain)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRingOpensUnderPreviousKeys(t *testing.T) {
	oldBox := mustBox(t, 1)
	newBox := mustBox(t, 2)
	sealedOld, err := oldBox.Seal([]byte("old-secret"))
	if err != nil {
		t.Fatal(err)
	}
	ring := secretbox.NewRing(newBox, nil, oldBox)
	got, err := ring.Open(sealedOld)
	if err != nil || string(got) != "old-secret" {
		t.Fatalf("Open(sealed under previous key) = %q, %v; want old-secret", got, err)
	}
	sealedNew, err := ring.Seal([]byte("new-secret"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oldBox.Open(sealedNew); err == nil {
		t.Fatal("Ring.Seal used a previous key: the previous Box opens it")
	}
	if got, err := newBox.Open(sealedNew); err != nil || string(got) != "new-secret" {
		t.Fatalf("current Box opens Ring.Seal's value = %q, %v", got, err)
	}
	// A value under a key the ring does not hold still fails with ErrOpen.
	stranger, _ := mustBox(t, 3).Seal([]byte("x"))
	if _, err := ring.Open(stranger); !errors.Is(err, secretbox.ErrOpen) {
		t.Fatalf("Open(foreign) = %v, want ErrOpen", err)
	}
	if s := fmt.Sprintf("%v %#v", ring, ring); strings.Contains(s, "0101") {
		t.Fatalf("formatting shows key material: %s", s)
	}
}

func mustBox(t *testing.T, fill byte) *secretbox.Box {
	t.Helper()
	b, err := secretbox.New(bytes.Repeat([]byte{fill}, secretbox.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
