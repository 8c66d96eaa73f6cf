package keycloak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/espmdm/espmdm/core/model"
)

// service names Keycloak in *model.UnavailableError.
const service = "keycloak"

// maxBody bounds every response body the adapter reads.
const maxBody = 8 << 20

// tokenExpiryDelta is how long before its expiry the admin token is
// replaced.
const tokenExpiryDelta = 30 * time.Second

// request is one Admin REST call.
type request struct {
	op     string // what the caller was doing, for error messages
	method string
	url    string
	body   any  // marshalled as JSON when non-nil
	auth   bool // send the admin bearer token
	// sensitive marks calls whose request or response carries a client
	// secret: their bodies are never quoted in errors.
	sensitive bool
	// accept lists non-2xx statuses the caller reads itself: they come
	// back as a response (with status set), are not retried and do not
	// refresh the admin token.
	accept []int
	// role names the realm-management role the call needs beyond the
	// client roles (manage-, view-, query-clients), for the message of a
	// 403.
	role string
}

// response is a 2xx answer, or one of the request's accepted statuses.
type response struct {
	status int
	header http.Header
	body   []byte
}

// decode unmarshals the body into v.
func (r response) decode(req request, v any) error {
	if err := json.Unmarshal(r.body, v); err != nil {
		// The body may hold a secret: say only what was wrong with it.
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		reason := "invalid JSON"
		if errors.As(err, &typ) {
			reason = "unexpected JSON type at " + typ.Field
		} else if errors.As(err, &syn) {
			reason = fmt.Sprintf("invalid JSON at offset %d", syn.Offset)
		}
		return unavailable(req.op, fmt.Errorf("undecodable response to %s: %s", req.method, reason))
	}
	return nil
}

func unavailable(op string, err error) error {
	return &model.UnavailableError{Service: service, Err: fmt.Errorf("%s: %w", op, err)}
}

// failure is why one attempt failed, and whether repeating it may help.
type failure struct {
	err error // description; may wrap model.ErrNotFound or model.ErrConflict
	// transient: a network error, a timeout or a 5xx.
	transient bool
	// notSent: failed before the admin request left (fetching the admin
	// token), so repeating it is safe even for a non-idempotent call.
	notSent bool
	// refused: the admin API answered 401/403.
	refused bool
}

// transport sends Admin REST calls with the access token of one account:
// Admin's service-account client, or the account that runs a RealmSetup.
// Admin and RealmSetup embed it.
type transport struct {
	http    *http.Client
	ownHTTP bool // http is the transport's own (no HTTPClient configured)
	tokens  *tokens
	sem     chan struct{}
	timeout time.Duration
	retries int
	backoff time.Duration
	// base is the URL prefix that messages leave out (see redact).
	base string
	// loginFailed describes a failed token fetch (see tokenError).
	loginFailed func(err error) *failure
	// refused advises on a 401 or 403 of the admin API to req.
	refused func(code int, req request) string
}

// newTransport returns a transport whose tokens come from fetch; hc nil
// means a client of its own.
func newTransport(hc *http.Client, fetch tokenSource, maxConcurrent int, timeout time.Duration, retries int, backoff time.Duration) transport {
	own := hc == nil
	if own {
		// Keep a connection per request in flight (and one for the admin
		// token): http.DefaultTransport keeps two idle per host, so at a
		// higher concurrency every further request would dial (and, on
		// https, handshake) anew.
		ht := http.DefaultTransport.(*http.Transport).Clone()
		ht.MaxIdleConnsPerHost = maxConcurrent + 1
		hc = &http.Client{Transport: ht}
	}
	return transport{
		http:        hc,
		ownHTTP:     own,
		tokens:      newTokens(fetch, hc, timeout),
		sem:         make(chan struct{}, maxConcurrent),
		timeout:     timeout,
		retries:     retries,
		backoff:     backoff,
		loginFailed: tokenError,
	}
}

// close closes the idle connections of the transport's own HTTP client.
func (t *transport) close() {
	if t.ownHTTP {
		t.http.CloseIdleConnections()
	}
}

// tokenSource fetches an access token under ctx (which carries the HTTP
// client as oauth2.HTTPClient).
type tokenSource func(ctx context.Context) (*oauth2.Token, error)

// tokens caches the admin access token and replaces it tokenExpiryDelta
// before it expires; reset drops it after the admin API refused it. At most
// one fetch is in flight: callers wait for it under their own contexts, and
// one that gives up leaves nothing behind (the fetch is bounded by the
// HTTP client's timeout).
type tokens struct {
	fetchToken tokenSource
	ctx        context.Context // carries the HTTP client of every fetch

	mu       sync.Mutex
	cached   *oauth2.Token
	inflight *tokenFetch
}

// tokenFetch is one request to the token endpoint; tok and err are set
// before done is closed.
type tokenFetch struct {
	done chan struct{}
	tok  *oauth2.Token
	err  error
}

func newTokens(fetch tokenSource, hc *http.Client, timeout time.Duration) *tokens {
	tc := *hc
	tc.Timeout = timeout
	return &tokens{fetchToken: fetch, ctx: context.WithValue(context.Background(), oauth2.HTTPClient, &tc)}
}

// fresh reports whether tok can still be used for tokenExpiryDelta.
func fresh(tok *oauth2.Token) bool {
	return tok != nil && tok.AccessToken != "" &&
		(tok.Expiry.IsZero() || time.Until(tok.Expiry) > tokenExpiryDelta)
}

// fetchNow fetches a new admin token now, under ctx (not waiting for a
// fetch in flight, whose token may have been issued before the call), and
// caches it.
func (t *tokens) fetchNow(ctx context.Context) (*oauth2.Token, error) {
	hc, _ := t.ctx.Value(oauth2.HTTPClient).(*http.Client)
	tok, err := t.fetchToken(context.WithValue(ctx, oauth2.HTTPClient, hc))
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.cached = tok
	t.mu.Unlock()
	return tok, nil
}

// reset forgets the cached token; the next call fetches a new one (a fetch
// already in flight still answers its waiters, but is not cached).
func (t *tokens) reset() {
	t.mu.Lock()
	t.cached, t.inflight = nil, nil
	t.mu.Unlock()
}

// token returns a valid admin token, giving up when ctx ends.
func (t *tokens) token(ctx context.Context) (*oauth2.Token, error) {
	t.mu.Lock()
	if fresh(t.cached) {
		tok := t.cached
		t.mu.Unlock()
		return tok, nil
	}
	f := t.inflight
	if f == nil {
		f = &tokenFetch{done: make(chan struct{})}
		t.inflight = f
		go t.fetch(f)
	}
	t.mu.Unlock()
	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (t *tokens) fetch(f *tokenFetch) {
	tok, err := t.fetchToken(t.ctx)
	t.mu.Lock()
	f.tok, f.err = tok, err
	if t.inflight == f { // not reset meanwhile
		t.inflight = nil
		if err == nil {
			t.cached = tok
		}
	}
	t.mu.Unlock()
	close(f.done)
}

// errTokenTimeout is a token fetch that ran out of the transport's timeout.
var errTokenTimeout = errors.New("timed out")

// tokenError describes a failed admin token fetch without the response body
// (which oauth2.RetrieveError's message includes).
func tokenError(err error) *failure {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.Response == nil {
		// Network error or timeout: the url.Error names only the endpoint.
		return &failure{err: fmt.Errorf("fetch admin token: %w", err), transient: true, notSent: true}
	}
	code := re.Response.StatusCode
	switch {
	case code >= 500:
		return &failure{err: fmt.Errorf("fetch admin token: token endpoint answered HTTP %d", code), transient: true, notSent: true}
	case code == http.StatusNotFound:
		return &failure{err: errors.New("fetch admin token: token endpoint not found (HTTP 404): check the Keycloak URL and realm")}
	default:
		msg := fmt.Sprintf("fetch admin token: token endpoint refused the admin client credentials (HTTP %d", code)
		if re.ErrorCode != "" {
			msg += " " + re.ErrorCode
		}
		return &failure{err: errors.New(msg + "): check the admin client id and secret")}
	}
}

// do runs req: at most MaxConcurrent at once, each attempt bounded by
// Timeout, repeated with backoff on transient failures when req is
// idempotent (or was not sent), and once more with a fresh admin token after
// a 401/403. Non-2xx answers become domain errors.
func (tr *transport) do(ctx context.Context, req request) (response, error) {
	var payload []byte
	if req.body != nil {
		var err error
		if payload, err = json.Marshal(req.body); err != nil {
			return response{}, fmt.Errorf("%s: encode request: %w", req.op, err)
		}
	}
	idempotent := req.method != http.MethodPost
	refreshed := false
	backoff := tr.backoff
	for retries := 0; ; {
		resp, f := tr.attempt(ctx, req, payload)
		if f == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return response{}, unavailable(req.op, fmt.Errorf("%w (%w)", ctx.Err(), f.err))
		}
		switch {
		case f.refused && !refreshed:
			// The token may have expired early or predate a role grant.
			refreshed = true
			tr.tokens.reset()
			continue
		case f.transient && (idempotent || f.notSent) && retries < tr.retries:
			retries++
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return response{}, unavailable(req.op, fmt.Errorf("%w (%w)", ctx.Err(), f.err))
			case <-t.C:
			}
			backoff *= 2
			continue
		}
		if errors.Is(f.err, model.ErrNotFound) || errors.Is(f.err, model.ErrConflict) {
			return response{}, fmt.Errorf("%s: %w", req.op, f.err)
		}
		return response{}, unavailable(req.op, f.err)
	}
}

// attempt sends req once.
func (tr *transport) attempt(ctx context.Context, req request, payload []byte) (response, *failure) {
	select {
	case tr.sem <- struct{}{}:
		defer func() { <-tr.sem }()
	case <-ctx.Done():
		return response{}, &failure{err: ctx.Err()}
	}
	actx, cancel := context.WithTimeout(ctx, tr.timeout)
	defer cancel()
	// timedOut tells this attempt's timeout (or the token client's, set to
	// the same) from the caller's end.
	timedOut := func(err error) bool {
		var ne net.Error
		return ctx.Err() == nil && (actx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()))
	}

	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	hreq, err := http.NewRequestWithContext(actx, req.method, req.url, body)
	if err != nil {
		return response{}, &failure{err: fmt.Errorf("build request: %w", err)}
	}
	hreq.Header.Set("Accept", "application/json")
	if payload != nil {
		hreq.Header.Set("Content-Type", "application/json")
	}
	if req.auth {
		tok, err := tr.tokens.token(actx)
		if err != nil {
			if timedOut(err) {
				err = fmt.Errorf("%w after %s", errTokenTimeout, tr.timeout)
			}
			return response{}, tr.loginFailed(err)
		}
		tok.SetAuthHeader(hreq)
	}

	where := req.method + " " + tr.redact(req.url)
	hresp, err := tr.http.Do(hreq)
	if err != nil {
		if timedOut(err) {
			return response{}, &failure{err: fmt.Errorf("%s: timed out after %s", where, tr.timeout), transient: true}
		}
		// *url.Error names method and URL; neither carries a secret.
		return response{}, &failure{err: err, transient: true}
	}
	defer hresp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hresp.Body, maxBody+1))
	if err != nil {
		return response{}, &failure{err: fmt.Errorf("%s: read response: %w", where, err), transient: true}
	}
	if len(data) > maxBody {
		return response{}, &failure{err: fmt.Errorf("%s: response larger than %d bytes", where, maxBody)}
	}
	code := hresp.StatusCode
	if (code >= 200 && code < 300) || slices.Contains(req.accept, code) {
		return response{status: code, header: hresp.Header, body: data}, nil
	}

	what := fmt.Sprintf("%s: HTTP %d", where, code)
	if !req.sensitive {
		if m := errorMessage(data); m != "" {
			what += " (" + m + ")"
		}
	}
	switch {
	case code == http.StatusNotFound:
		return response{}, &failure{err: fmt.Errorf("%s: %w", what, model.ErrNotFound)}
	case code == http.StatusConflict:
		return response{}, &failure{err: fmt.Errorf("%s: %w", what, model.ErrConflict)}
	case req.auth && (code == http.StatusUnauthorized || code == http.StatusForbidden):
		return response{}, &failure{refused: true, err: fmt.Errorf("%s: %s", what, tr.refused(code, req))}
	case code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout:
		return response{}, &failure{err: errors.New(what), transient: true}
	default:
		return response{}, &failure{err: fmt.Errorf("%s: Keycloak rejected the request", what)}
	}
}

// redact shortens an admin URL to its path below the transport's base for
// messages.
func (tr *transport) redact(u string) string {
	if rest, ok := strings.CutPrefix(u, tr.base); ok {
		if i := strings.IndexByte(rest, '?'); i >= 0 {
			rest = rest[:i]
		}
		return rest
	}
	return u
}

// errorMessage extracts Keycloak's error text from an error body, bounded.
func errorMessage(body []byte) string {
	var e struct {
		ErrorMessage     string `json:"errorMessage"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	m := e.ErrorMessage
	if m == "" {
		m = e.Error + " " + e.ErrorDescription
	}
	return oneLine(m)
}

// oneLine bounds a text Keycloak sent for a message: one line, at most 200
// bytes, valid UTF-8.
func oneLine(m string) string {
	m = strings.Join(strings.Fields(m), " ")
	const limit = 200
	if len(m) > limit {
		m = m[:limit] + "..."
	}
	return strings.ToValidUTF8(m, "?")
}
