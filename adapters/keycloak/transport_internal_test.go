package keycloak

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
)

// tokenCounter counts the requests to the token endpoint.
type tokenCounter struct{ n atomic.Int32 }

func (c *tokenCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/protocol/openid-connect/token") {
		c.n.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// The admin token is cached; when the admin API refuses it (here: revoked
// in Keycloak), the adapter fetches a new one once and repeats the call.
func TestAdminRefetchesARefusedToken(t *testing.T) {
	st := integration.Shared(t)
	counter := &tokenCounter{}
	a, err := NewAdmin(AdminConfig{
		BaseURL: st.KeycloakURL, Realm: st.Realm, ClientID: st.AdminClientID, ClientSecret: st.AdminClientSecret,
		DeviceAudience: st.DeviceAudience, HTTPClient: &http.Client{Transport: counter},
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := a.ListDeviceClients(t.Context()); err != nil {
			t.Fatalf("ListDeviceClients: %v", err)
		}
	}
	if got := counter.n.Load(); got != 1 {
		t.Errorf("token fetches for three calls: %d, want 1 (cached)", got)
	}

	tok, err := a.tokens.token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	form := url.Values{"token": {tok.AccessToken}, "token_type_hint": {"access_token"},
		"client_id": {st.AdminClientID}, "client_secret": {st.AdminClientSecret}}
	resp, err := http.PostForm(st.IssuerURL+"/protocol/openid-connect/revoke", form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke the admin token: HTTP %d", resp.StatusCode)
	}

	if _, err := a.ListDeviceClients(t.Context()); err != nil {
		t.Fatalf("ListDeviceClients with a revoked cached token: %v", err)
	}
	if got := counter.n.Load(); got != 2 {
		t.Errorf("token fetches after the revocation: %d, want 2", got)
	}
	fresh, err := a.tokens.token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if fresh.AccessToken == tok.AccessToken {
		t.Errorf("the revoked token is still cached")
	}
	if fresh.Expiry.IsZero() {
		t.Errorf("the admin token has no expiry: the cache could not refresh it early")
	}
}

// adminCutOff passes token requests to Keycloak and sends admin API
// requests to a port nobody listens on, counting them by method.
type adminCutOff struct {
	closed string // host:port
	calls  sync.Map
}

func (c *adminCutOff) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/admin/") {
		n, _ := c.calls.LoadOrStore(r.Method, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		r = r.Clone(r.Context())
		r.URL.Host = c.closed
	}
	return http.DefaultTransport.RoundTrip(r)
}

func (c *adminCutOff) count(method string) int32 {
	n, ok := c.calls.Load(method)
	if !ok {
		return 0
	}
	return n.(*atomic.Int32).Load()
}

// Network failures are retried for GET (twice by default), never for the
// POSTs that create a client or a secret.
func TestOnlyIdempotentCallsAreRetried(t *testing.T) {
	st := integration.Shared(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	cut := &adminCutOff{closed: closed}
	a, err := NewAdmin(AdminConfig{
		BaseURL: st.KeycloakURL, Realm: st.Realm, ClientID: st.AdminClientID, ClientSecret: st.AdminClientSecret,
		DeviceAudience: st.DeviceAudience, HTTPClient: &http.Client{Transport: cut}, RetryBackoff: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ClientStatus(t.Context(), "iotdevice-kc_test-aaaaaaaa"); !errors.Is(err, model.ErrUnavailable) {
		t.Fatalf("ClientStatus: got %v, want ErrUnavailable", err)
	}
	if got := cut.count(http.MethodGet); got != 3 {
		t.Errorf("GET attempts: %d, want 3", got)
	}
	if _, err := a.CreateClient(t.Context(), "iotdevice-kc_test-aaaaaaaa"); !errors.Is(err, model.ErrUnavailable) {
		t.Fatalf("CreateClient: got %v, want ErrUnavailable", err)
	}
	if got := cut.count(http.MethodPost); got != 1 {
		t.Errorf("POST attempts: %d, want 1", got)
	}
}

// tokenStall holds every token request until released, as a hung token
// endpoint would, and counts them; admin API requests pass to Keycloak.
type tokenStall struct {
	release  chan struct{}
	started  atomic.Int32
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func (s *tokenStall) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/protocol/openid-connect/token") {
		s.started.Add(1)
		defer enter(&s.inFlight, &s.maxSeen)()
		select {
		case <-s.release:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Callers that give up on a hung token endpoint leave no fetch behind: one
// fetch is in flight however many calls wait, none is started for callers
// that have gone, and the next call after the endpoint recovers gets a
// token.
func TestHungTokenEndpointCostsOneFetch(t *testing.T) {
	st := integration.Shared(t)
	stall := &tokenStall{release: make(chan struct{})}
	const fetchTimeout = 100 * time.Millisecond
	a, err := NewAdmin(AdminConfig{
		BaseURL: st.KeycloakURL, Realm: st.Realm, ClientID: st.AdminClientID, ClientSecret: st.AdminClientSecret,
		DeviceAudience: st.DeviceAudience, HTTPClient: &http.Client{Transport: stall}, Timeout: fetchTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), fetchTimeout/2)
			defer cancel()
			if _, err := a.tokens.token(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("token while the endpoint hangs: %v, want the caller's deadline", err)
			}
		}()
	}
	wg.Wait()
	// Long enough for ten more timed-out fetches, were any queued.
	time.Sleep(10 * fetchTimeout)
	if got, peak := stall.started.Load(), stall.maxSeen.Load(); got != 1 || peak != 1 {
		t.Errorf("token requests for 50 waiting calls: %d in all, %d at once; want 1 and 1", got, peak)
	}
	if n := stall.inFlight.Load(); n != 0 {
		t.Errorf("%d token requests still waiting after their timeout", n)
	}
	close(stall.release)
	tok, err := a.tokens.token(t.Context())
	if err != nil || tok.AccessToken == "" {
		t.Fatalf("token once the endpoint answers: %v", err)
	}
	if got := stall.started.Load(); got != 2 {
		t.Errorf("token requests after recovery: %d in all, want 2", got)
	}
}

// enter counts one more request in flight, raises peak to the count, and
// returns the function that counts it out.
func enter(inFlight, peak *atomic.Int32) (leave func()) {
	n := inFlight.Add(1)
	for {
		m := peak.Load()
		if n <= m || peak.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { inFlight.Add(-1) }
}

// peakCounter records how many admin API requests are in flight at once.
type peakCounter struct {
	inFlight, peak atomic.Int32
}

func (p *peakCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/admin/") {
		defer enter(&p.inFlight, &p.peak)()
		time.Sleep(20 * time.Millisecond) // let the callers pile up
	}
	return http.DefaultTransport.RoundTrip(r)
}

// However many callers there are, at most MaxConcurrent admin requests are
// in flight.
func TestAdminRequestsAreBounded(t *testing.T) {
	st := integration.Shared(t)
	peak := &peakCounter{}
	a, err := NewAdmin(AdminConfig{
		BaseURL: st.KeycloakURL, Realm: st.Realm, ClientID: st.AdminClientID, ClientSecret: st.AdminClientSecret,
		DeviceAudience: st.DeviceAudience, HTTPClient: &http.Client{Transport: peak}, MaxConcurrent: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.ClientStatus(t.Context(), "iotdevice-kc_bound-aaaaaaaa"); err != nil {
				t.Errorf("ClientStatus: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := peak.peak.Load(); got != 2 {
		t.Errorf("admin requests in flight at most: %d, want 2 (MaxConcurrent)", got)
	}
}
