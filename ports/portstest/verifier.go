package portstest

import (
	"context"
	"fmt"
	"sync"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// TokenVerifier is a ports.TokenVerifier that knows a fixed set of raw
// tokens. Unknown tokens are model.ErrUnauthenticated.
type TokenVerifier struct {
	mu      sync.Mutex
	devices map[string]model.DeviceClaims
	admins  map[string]model.Principal
}

var _ ports.TokenVerifier = (*TokenVerifier)(nil)

// NewTokenVerifier returns a TokenVerifier that knows no token.
func NewTokenVerifier() *TokenVerifier {
	return &TokenVerifier{devices: map[string]model.DeviceClaims{}, admins: map[string]model.Principal{}}
}

// AddDevice makes raw a valid device token carrying c.
func (v *TokenVerifier) AddDevice(raw string, c model.DeviceClaims) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.devices[raw] = c
}

// AddAdmin makes raw a valid admin token for p.
func (v *TokenVerifier) AddAdmin(raw string, p model.Principal) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.admins[raw] = p
}

// VerifyDevice implements ports.TokenVerifier.
func (v *TokenVerifier) VerifyDevice(_ context.Context, raw string) (model.DeviceClaims, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c, ok := v.devices[raw]
	if !ok {
		return model.DeviceClaims{}, fmt.Errorf("device token: %w", model.ErrUnauthenticated)
	}
	return c, nil
}

// VerifyAdmin implements ports.TokenVerifier.
func (v *TokenVerifier) VerifyAdmin(_ context.Context, raw string) (model.Principal, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	p, ok := v.admins[raw]
	if !ok {
		return model.Principal{}, fmt.Errorf("admin token: %w", model.ErrUnauthenticated)
	}
	return p, nil
}
