package portstest

import (
	"bytes"
	"testing"

	"github.com/espmdm/espmdm/ports"
)

// RunSecretBoxContract runs the contract of ports.SecretBox against the box
// newBox returns.
func RunSecretBoxContract(t *testing.T, newBox func(t *testing.T) ports.SecretBox) {
	t.Helper()
	t.Run("Seal then Open round-trips and hides the plaintext", func(t *testing.T) {
		box := newBox(t)
		for _, plain := range [][]byte{[]byte("s3cr3t-client-secret-value"), {}, bytes.Repeat([]byte{0}, 100)} {
			sealed, err := box.Seal(plain)
			mustNoErr(t, "Seal", err)
			if len(plain) > 4 && bytes.Contains(sealed, plain) {
				t.Errorf("sealed value contains the plaintext")
			}
			again, err := box.Seal(plain)
			mustNoErr(t, "Seal(again)", err)
			if bytes.Equal(sealed, again) {
				t.Errorf("two seals of the same plaintext are identical (nonce reuse?)")
			}
			got, err := box.Open(sealed)
			mustNoErr(t, "Open", err)
			if !bytes.Equal(got, plain) {
				t.Errorf("Open(Seal(%q)) = %q", plain, got)
			}
		}
	})
	t.Run("Open refuses tampered or garbage input", func(t *testing.T) {
		box := newBox(t)
		sealed, err := box.Seal([]byte("secret"))
		mustNoErr(t, "Seal", err)
		for i := range sealed {
			bad := bytes.Clone(sealed)
			bad[i] ^= 0x01
			if _, err := box.Open(bad); err == nil {
				t.Fatalf("Open accepted a value with byte %d flipped", i)
			}
		}
		for _, bad := range [][]byte{nil, {1, 2, 3}, sealed[:len(sealed)-1]} {
			if _, err := box.Open(bad); err == nil {
				t.Errorf("Open(%x) succeeded, want an error", bad)
			}
		}
	})
}
