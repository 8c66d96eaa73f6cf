package portstest

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

const keyAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// randomKey returns a random device key ([a-z0-9]{8}).
func randomKey() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		// The tiny modulo bias does not matter for test data.
		b[i] = keyAlphabet[int(b[i])%len(keyAlphabet)]
	}
	return string(b)
}

// UniqueCode returns a device model code that starts with prefix and ends
// with a random suffix, so tests sharing a database do not collide. prefix
// should be short: a code has at most 50 chars.
func UniqueCode(prefix string) string {
	return prefix + "_" + randomKey()
}

// now returns the current time truncated to microseconds (what Postgres
// keeps) in UTC.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// jsonEqual reports whether a and b are the same JSON value (ignoring
// formatting and key order, as jsonb does). Two empty values are equal.
func jsonEqual(a, b json.RawMessage) bool {
	a, b = bytes.TrimSpace(a), bytes.TrimSpace(b)
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

func isNullJSON(r json.RawMessage) bool {
	r = bytes.TrimSpace(r)
	return len(r) == 0 || string(r) == "null"
}

func wantErrIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want %v", what, err, target)
	}
}

func mustNoErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func timeEq(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

func ptr[T any](v T) *T { return &v }
