package portstest

import (
	"context"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// IdentityProvider is an in-memory ports.IdentityProvider.
type IdentityProvider struct {
	// Hook, when set, is called with the method name ("CreateClient",
	// "DeleteClient", ...) and the client id ("" for ListDeviceClients and
	// Ping) before each operation; a non-nil result fails the operation
	// with that error and changes nothing. Set it before use.
	Hook func(op, clientID string) error

	now func() time.Time

	mu      sync.Mutex
	clients map[string]*fakeClient
	calls   []IdPCall
}

// IdPCall is one recorded IdentityProvider call.
type IdPCall struct {
	Op       string
	ClientID string
}

type fakeClient struct {
	secret    string
	createdAt time.Time
	problems  []string
}

var _ ports.IdentityProvider = (*IdentityProvider)(nil)

// NewIdentityProvider returns an empty IdentityProvider stamping client
// creation times from clock (the wall clock when nil).
func NewIdentityProvider(clock ports.Clock) *IdentityProvider {
	return &IdentityProvider{now: nowFunc(clock), clients: map[string]*fakeClient{}}
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
// unknown), bypassing Hook and the call log. Tests use it to plant orphans.
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
	c := &fakeClient{secret: newSecret(), createdAt: p.now()}
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
		c.problems = nil
	} else {
		p.clients[clientID] = &fakeClient{secret: newSecret(), createdAt: p.now()}
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
	c.secret = newSecret()
	return c.secret, nil
}

// SetSecret implements ports.IdentityProvider.
func (p *IdentityProvider) SetSecret(_ context.Context, clientID, secret string) error {
	if err := p.begin("SetSecret", clientID); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[clientID]
	if !ok {
		return notFound(clientID)
	}
	c.secret = secret
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
			out = append(out, model.ClientInfo{ClientID: id, CreatedAt: c.createdAt})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ClientID < out[j].ClientID })
	return out, nil
}

// Ping implements ports.IdentityProvider.
func (p *IdentityProvider) Ping(_ context.Context) error {
	return p.begin("Ping", "")
}
