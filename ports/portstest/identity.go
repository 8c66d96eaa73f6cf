package portstest

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// IdentityProvider is an in-memory ports.IdentityProvider that behaves as
// Keycloak does, with or without a client policy whose secret-rotation
// profile covers the device clients (SetRotationPolicy, SetGrace; by
// default it has one, DefaultRotationPolicy).
//
// The policy is in force when its FeatureEnabled and Covered are both
// true. Then, as in Keycloak: RegenerateSecret keeps the old secret valid
// as the rotated secret for RotatedExpiration (by the fake's clock; none
// when RotatedExpiration is 0); creating or updating a client
// (CreateClient, RepairClient of a broken client, SetSecret, CoverClient,
// RegenerateSecret) covers it. Without a policy in force a generation ends
// the old secret at once, and an update uncovers the client and drops its
// rotated secret (Keycloak removes the rotation state when no
// secret-rotation executor ran). A rotated secret authenticates only while
// FeatureEnabled. Authenticates tells which secrets are accepted now.
type IdentityProvider struct {
	// Hook, when set, is called with the method name ("CreateClient",
	// "DeleteClient", "Secrets", "InvalidateRotatedSecret", "CoverClient", "CoveredSecrets",
	// "RotationPolicy", ...) and the client id ("" for ListDeviceClients,
	// RotationPolicy, Now and Ping) before each operation; a non-nil result
	// fails the operation with that error and changes nothing. Set it
	// before use.
	Hook func(op, clientID string) error

	now func() time.Time

	mu      sync.Mutex
	clients map[string]*fakeClient
	calls   []IdPCall
	policy  model.RotationPolicy
}

// IdPCall is one recorded IdentityProvider call.
type IdPCall struct {
	Op       string
	ClientID string
}

type fakeClient struct {
	secret       string
	secretAt     time.Time // when secret was made (whole seconds); zero when unknown
	rotated      string    // the old secret after a generation under the policy
	rotatedUntil time.Time // rotated authenticates until then (inclusive)
	covered      bool      // the policy's executor has run on the client
	createdAt    time.Time
	problems     []string
}

var (
	_ ports.IdentityProvider     = (*IdentityProvider)(nil)
	_ ports.CoveredSecretsReader = (*IdentityProvider)(nil)
)

// NewIdentityProvider returns an empty IdentityProvider with
// DefaultRotationPolicy, stamping client creation times and rotated-secret
// expiries from clock (the wall clock when nil).
func NewIdentityProvider(clock ports.Clock) *IdentityProvider {
	return &IdentityProvider{now: nowFunc(clock), clients: map[string]*fakeClient{}, policy: DefaultRotationPolicy()}
}

// DefaultRotationPolicy is the policy of the integration stack's realm: the
// feature on and a covering secret-rotation profile with a five-year main
// secret, seven days of grace and no rotation on updates.
func DefaultRotationPolicy() model.RotationPolicy {
	return model.RotationPolicy{
		FeatureEnabled:    true,
		Covered:           true,
		Name:              "espmdm-secret-rotation/espmdm-secret-rotation",
		Expiration:        157680000 * time.Second,
		RotatedExpiration: 7 * 24 * time.Hour,
	}
}

// FeatureOffRotationPolicy is what a Keycloak without the
// client-secret-rotation feature reports.
func FeatureOffRotationPolicy() model.RotationPolicy {
	return model.RotationPolicy{Problems: []string{
		"Keycloak's client-secret-rotation feature is off: start Keycloak with --features=client-secret-rotation",
	}}
}

// SetRotationPolicy sets what RotationPolicy reports and how secrets
// behave from now on (see IdentityProvider). Clients keep their covered
// state and rotated secrets until their next update, as in Keycloak.
func (p *IdentityProvider) SetRotationPolicy(pol model.RotationPolicy) {
	pol.Problems = slices.Clone(pol.Problems)
	p.mu.Lock()
	p.policy = pol
	p.mu.Unlock()
}

// SetGrace switches between DefaultRotationPolicy (true) and
// FeatureOffRotationPolicy (false).
func (p *IdentityProvider) SetGrace(on bool) {
	if on {
		p.SetRotationPolicy(DefaultRotationPolicy())
	} else {
		p.SetRotationPolicy(FeatureOffRotationPolicy())
	}
}

// inForce reports whether a secret-rotation executor runs on the clients.
// Callers hold p.mu.
func (p *IdentityProvider) inForce() bool { return p.policy.FeatureEnabled && p.policy.Covered }

// update is what a Keycloak client update does to the rotation state.
// Callers hold p.mu.
func (p *IdentityProvider) update(c *fakeClient) {
	c.covered = p.inForce()
	if !c.covered {
		c.rotated, c.rotatedUntil = "", time.Time{}
	}
}

// rotatedValid reports whether c's rotated secret authenticates now.
// Callers hold p.mu.
func (p *IdentityProvider) rotatedValid(c *fakeClient) bool {
	return c.rotated != "" && p.policy.FeatureEnabled && !p.now().After(c.rotatedUntil)
}

// Authenticates reports whether the client exists and secret is accepted
// for it now: its current secret, or its rotated secret within its grace.
// It bypasses Hook and the call log.
func (p *IdentityProvider) Authenticates(clientID, secret string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok || secret == "" {
		return false
	}
	return secret == c.secret || (secret == c.rotated && p.rotatedValid(c))
}

// Covered reports whether the client exists and the policy has been
// applied to it (see CoverClient).
func (p *IdentityProvider) Covered(clientID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	return ok && c.covered
}

// Calls returns every call made so far, in order (including failed ones).
func (p *IdentityProvider) Calls() []IdPCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]IdPCall(nil), p.calls...)
}

// Has reports whether the client exists.
func (p *IdentityProvider) Has(clientID string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.clients[clientID]
	return ok
}

// Put adds or replaces a client directly, as if created at createdAt (zero:
// unknown), bypassing Hook and the call log. Tests use it to plant orphans
// and clients made outside espmdm: a planted client is uncovered, as one
// made before the realm's policy existed (or imported) is, until an update
// (CoverClient) covers it; it has no rotated secret.
func (p *IdentityProvider) Put(clientID, secret string, createdAt time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clients[clientID] = &fakeClient{secret: secret, createdAt: createdAt}
}

// Break marks an existing client as misconfigured: ClientStatus reports
// problem until RepairClient runs.
func (p *IdentityProvider) Break(clientID, problem string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[clientID]; ok {
		c.problems = append(c.problems, problem)
	}
}

func (p *IdentityProvider) begin(op, clientID string) error {
	p.mu.Lock()
	p.calls = append(p.calls, IdPCall{Op: op, ClientID: clientID})
	p.mu.Unlock()
	if p.Hook != nil {
		return p.Hook(op, clientID)
	}
	return nil
}

func newSecret() string {
	return rand.Text()
}

func notFound(clientID string) error {
	return fmt.Errorf("client %s: %w", clientID, model.ErrNotFound)
}

// CreateClient implements ports.IdentityProvider.
func (p *IdentityProvider) CreateClient(_ context.Context, clientID string) (string, error) {
	if err := p.begin("CreateClient", clientID); err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.clients[clientID]; ok {
		return "", fmt.Errorf("client %s: %w", clientID, model.ErrConflict)
	}
	c := &fakeClient{secret: newSecret(), secretAt: p.second(), createdAt: p.now(), covered: p.inForce()}
	p.clients[clientID] = c
	return c.secret, nil
}

// DeleteClient implements ports.IdentityProvider.
func (p *IdentityProvider) DeleteClient(_ context.Context, clientID string) error {
	if err := p.begin("DeleteClient", clientID); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.clients, clientID)
	return nil
}

func (p *IdentityProvider) status(clientID string) model.IdentityStatus {
	c, ok := p.clients[clientID]
	if !ok {
		return model.IdentityStatus{ClientID: clientID}
	}
	return model.IdentityStatus{
		ClientID:       clientID,
		Exists:         true,
		Enabled:        true,
		ServiceAccount: true,
		Problems:       append([]string(nil), c.problems...),
	}
}

// ClientStatus implements ports.IdentityProvider.
func (p *IdentityProvider) ClientStatus(_ context.Context, clientID string) (model.IdentityStatus, error) {
	if err := p.begin("ClientStatus", clientID); err != nil {
		return model.IdentityStatus{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status(clientID), nil
}

// RepairClient implements ports.IdentityProvider.
func (p *IdentityProvider) RepairClient(_ context.Context, clientID string) (model.IdentityStatus, error) {
	if err := p.begin("RepairClient", clientID); err != nil {
		return model.IdentityStatus{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[clientID]; ok {
		if len(c.problems) > 0 { // the adapter updates only a broken client
			p.update(c)
		}
		c.problems = nil
	} else {
		p.clients[clientID] = &fakeClient{secret: newSecret(), secretAt: p.second(), createdAt: p.now(), covered: p.inForce()}
	}
	return p.status(clientID), nil
}

// ClientSecret implements ports.IdentityProvider.
func (p *IdentityProvider) ClientSecret(_ context.Context, clientID string) (string, error) {
	if err := p.begin("ClientSecret", clientID); err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return "", notFound(clientID)
	}
	return c.secret, nil
}

// RegenerateSecret implements ports.IdentityProvider.
func (p *IdentityProvider) RegenerateSecret(_ context.Context, clientID string) (string, error) {
	if err := p.begin("RegenerateSecret", clientID); err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return "", notFound(clientID)
	}
	old := c.secret
	c.secret, c.secretAt = newSecret(), p.second()
	p.update(c)
	if c.covered && p.policy.RotatedExpiration > 0 {
		c.rotated, c.rotatedUntil = old, p.now().Add(p.policy.RotatedExpiration)
	} else {
		c.rotated, c.rotatedUntil = "", time.Time{}
	}
	return c.secret, nil
}

// Secrets implements ports.IdentityProvider.
func (p *IdentityProvider) Secrets(_ context.Context, clientID string) (model.Secrets, error) {
	if err := p.begin("Secrets", clientID); err != nil {
		return model.Secrets{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return model.Secrets{}, notFound(clientID)
	}
	s := model.Secrets{Current: c.secret}
	if p.rotatedValid(c) {
		s.Rotated = c.rotated
	}
	return s, nil
}

// InvalidateRotatedSecret implements ports.IdentityProvider.
func (p *IdentityProvider) InvalidateRotatedSecret(_ context.Context, clientID string) error {
	if err := p.begin("InvalidateRotatedSecret", clientID); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return notFound(clientID)
	}
	c.rotated, c.rotatedUntil = "", time.Time{}
	return nil
}

// CoverClient implements ports.IdentityProvider: an uncovered client is
// updated (and so covered when a policy is in force; without one, every
// call updates again, as the Keycloak adapter does).
func (p *IdentityProvider) CoverClient(_ context.Context, clientID string) (bool, error) {
	if err := p.begin("CoverClient", clientID); err != nil {
		return false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return false, notFound(clientID)
	}
	if c.covered {
		return false, nil
	}
	p.update(c)
	return true, nil
}

// CoveredSecrets implements ports.CoveredSecretsReader: CoverClient, then the
// secrets, under one lock (a failure set for "CoveredSecrets" fails it
// before either).
func (p *IdentityProvider) CoveredSecrets(_ context.Context, clientID string) (model.Secrets, error) {
	if err := p.begin("CoveredSecrets", clientID); err != nil {
		return model.Secrets{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return model.Secrets{}, notFound(clientID)
	}
	if !c.covered {
		p.update(c)
	}
	s := model.Secrets{Current: c.secret}
	if p.rotatedValid(c) {
		s.Rotated = c.rotated
	}
	return s, nil
}

// SecretState implements ports.IdentityProvider. As in Keycloak, the
// creation time is that of the last generation (CreateClient,
// RegenerateSecret): SetSecret keeps it; a client planted with Put has
// none.
func (p *IdentityProvider) SecretState(_ context.Context, clientID string) (model.SecretState, error) {
	if err := p.begin("SecretState", clientID); err != nil {
		return model.SecretState{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return model.SecretState{}, notFound(clientID)
	}
	return model.SecretState{CreatedAt: c.secretAt, Rotated: c.rotated != "" && !p.now().After(c.rotatedUntil)}, nil
}

// Now implements ports.IdentityProvider: the fake's clock, in whole
// seconds.
func (p *IdentityProvider) Now(_ context.Context) (time.Time, error) {
	if err := p.begin("Now", ""); err != nil {
		return time.Time{}, err
	}
	return p.second(), nil
}

// second is the fake's clock in whole seconds, as Keycloak records times.
func (p *IdentityProvider) second() time.Time {
	return time.Unix(p.now().Unix(), 0).UTC()
}

// RotationPolicy implements ports.IdentityProvider: it reports the policy
// set with SetRotationPolicy.
func (p *IdentityProvider) RotationPolicy(_ context.Context) (model.RotationPolicy, error) {
	if err := p.begin("RotationPolicy", ""); err != nil {
		return model.RotationPolicy{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pol := p.policy
	pol.Problems = slices.Clone(pol.Problems)
	return pol, nil
}

// SetSecret implements ports.IdentityProvider: secret becomes the only
// valid one. An empty secret is a *model.ValidationError, as in the
// Keycloak adapter.
func (p *IdentityProvider) SetSecret(_ context.Context, clientID, secret string) error {
	if err := p.begin("SetSecret", clientID); err != nil {
		return err
	}
	if secret == "" {
		return model.Invalid("secret", "an empty secret cannot be set")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return notFound(clientID)
	}
	c.secret = secret
	c.rotated, c.rotatedUntil = "", time.Time{}
	p.update(c)
	return nil
}

// ListDeviceClients implements ports.IdentityProvider; clients come sorted
// by id.
func (p *IdentityProvider) ListDeviceClients(_ context.Context) ([]model.ClientInfo, error) {
	if err := p.begin("ListDeviceClients", ""); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []model.ClientInfo
	for id, c := range p.clients {
		if strings.HasPrefix(id, model.ClientIDPrefix) {
			out = append(out, model.ClientInfo{ClientID: id, CreatedAt: c.createdAt, Covered: c.covered, Rotated: p.rotatedValid(c)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ClientID < out[j].ClientID })
	return out, nil
}

// Ping implements ports.IdentityProvider.
func (p *IdentityProvider) Ping(_ context.Context) error {
	return p.begin("Ping", "")
}
