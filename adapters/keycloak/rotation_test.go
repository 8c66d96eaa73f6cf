package keycloak_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
)

// Under the stack realm's secret-rotation policy a generation keeps the old
// secret valid beside the new one for the grace; invalidating ends it;
// SetSecret restores one secret as the only valid one.
func TestGraceRotationAgainstTheTokenEndpoint(t *testing.T) {
	st := integration.Shared(t)
	a := newAdmin(t, adminConfig(st))
	id, old := createClient(t, a)
	mustToken(t, st, id, old)

	fresh, err := a.RegenerateSecret(t.Context(), id)
	mustNoErr(t, "RegenerateSecret", err)
	if fresh == "" || fresh == old {
		t.Fatalf("RegenerateSecret returned an empty or unchanged secret")
	}
	mustToken(t, st, id, fresh)
	mustToken(t, st, id, old)
	wantSecrets(t, a, id, fresh, old)
	// Keycloak keeps the grace in the client's attributes.
	exp, err := strconv.ParseInt(attrs(rawClient(t, st, id))["client.secret.rotated.expiration.time"].(string), 10, 64)
	mustNoErr(t, "rotated expiration time", err)
	if d := time.Until(time.Unix(exp, 0)); d < st.RotationGrace-time.Minute || d > st.RotationGrace+time.Minute {
		t.Errorf("the rotated secret expires in %v, want about %v (ROTATION_GRACE)", d, st.RotationGrace)
	}

	mustNoErr(t, "InvalidateRotatedSecret", a.InvalidateRotatedSecret(t.Context(), id))
	if _, code := clientToken(t, st, id, old); code != http.StatusUnauthorized {
		t.Errorf("old secret after InvalidateRotatedSecret: HTTP %d, want 401", code)
	}
	mustToken(t, st, id, fresh)
	wantSecrets(t, a, id, fresh, "")
	mustNoErr(t, "InvalidateRotatedSecret(again)", a.InvalidateRotatedSecret(t.Context(), id))
	mustToken(t, st, id, fresh)

	// The restore path: a generation, then SetSecret of the secret before.
	newer, err := a.RegenerateSecret(t.Context(), id)
	mustNoErr(t, "RegenerateSecret(again)", err)
	mustToken(t, st, id, fresh) // rotated now
	mustNoErr(t, "SetSecret(fresh)", a.SetSecret(t.Context(), id, fresh))
	mustToken(t, st, id, fresh)
	if _, code := clientToken(t, st, id, newer); code != http.StatusUnauthorized {
		t.Errorf("generated secret after SetSecret of the one before: HTTP %d, want 401", code)
	}
	wantSecrets(t, a, id, fresh, "")
	got, err := a.ClientSecret(t.Context(), id)
	mustNoErr(t, "ClientSecret", err)
	if got != fresh {
		t.Errorf("ClientSecret after SetSecret is not the set secret")
	}
	after := attrs(rawClient(t, st, id))
	if _, ok := after["client.secret.rotated"]; ok {
		t.Errorf("the rotated secret's attribute survived SetSecret")
	}
	if _, ok := after["client.secret.expiration.time"]; !ok {
		t.Errorf("after SetSecret the policy did not give the secret an expiry (client.secret.expiration.time)")
	}
	// SetSecret kept the rest of the client.
	status, err := a.ClientStatus(t.Context(), id)
	mustNoErr(t, "ClientStatus", err)
	if len(status.Problems) != 0 {
		t.Errorf("ClientStatus after SetSecret: problems %v", status.Problems)
	}
	var ve *model.ValidationError
	if err := a.SetSecret(t.Context(), id, ""); !errors.As(err, &ve) {
		t.Errorf("SetSecret(empty): got %v, want a *model.ValidationError", err)
	}
}

// wantSecrets checks Secrets without quoting any secret.
func wantSecrets(t *testing.T, a interface {
	Secrets(ctx context.Context, clientID string) (model.Secrets, error)
}, id, current, rotated string) {
	t.Helper()
	got, err := a.Secrets(t.Context(), id)
	mustNoErr(t, "Secrets", err)
	if got.Current != current {
		t.Errorf("Secrets(%s).Current is not the expected secret", id)
	}
	if got.Rotated != rotated {
		t.Errorf("Secrets(%s).Rotated differs (empty: got %v, want %v)", id, got.Rotated == "", rotated == "")
	}
}

func TestCoverClient(t *testing.T) {
	st := integration.Shared(t)
	calls := &adminCalls{}
	cfg := adminConfig(st)
	cfg.HTTPClient = &http.Client{Transport: calls}
	a := newAdmin(t, cfg)

	t.Run("a client created under the policy is covered: no update", func(t *testing.T) {
		id, secret := createClient(t, a)
		if _, ok := attrs(rawClient(t, st, id))["client.secret.expiration.time"]; !ok {
			t.Fatalf("a client created under the policy lacks client.secret.expiration.time")
		}
		puts := calls.count(http.MethodPut)
		updated, err := a.CoverClient(t.Context(), id)
		mustNoErr(t, "CoverClient", err)
		if updated {
			t.Errorf("CoverClient of a covered client: updated, want no update")
		}
		if n := calls.count(http.MethodPut) - puts; n != 0 {
			t.Errorf("CoverClient of a covered client sent %d PUTs, want none", n)
		}
		wantSecrets(t, a, id, secret, "")
	})

	t.Run("a client made before the policy is updated once, keeping its secret", func(t *testing.T) {
		id, secret := uncoveredClient(t, st, a)
		before := attrs(rawClient(t, st, id))
		if _, ok := before["client.secret.expiration.time"]; ok {
			t.Fatalf("the imported client has client.secret.expiration.time: it is covered already")
		}
		mustToken(t, st, id, secret)
		// A token request does not apply the policy.
		if _, ok := attrs(rawClient(t, st, id))["client.secret.expiration.time"]; ok {
			t.Fatalf("a token request covered the client")
		}

		puts := calls.count(http.MethodPut)
		updated, err := a.CoverClient(t.Context(), id)
		mustNoErr(t, "CoverClient", err)
		if !updated {
			t.Errorf("CoverClient of an uncovered client: no update, want one")
		}
		if n := calls.count(http.MethodPut) - puts; n != 1 {
			t.Errorf("CoverClient of an uncovered client sent %d PUTs, want 1", n)
		}
		after := attrs(rawClient(t, st, id))
		exp, err := strconv.ParseInt(after["client.secret.expiration.time"].(string), 10, 64)
		mustNoErr(t, "client.secret.expiration.time after CoverClient", err)
		if exp <= time.Now().Unix() {
			t.Errorf("client.secret.expiration.time after CoverClient = %d, want in the future", exp)
		}
		if after["espmdm.created"] != before["espmdm.created"] {
			t.Errorf("CoverClient lost or changed the creation attribute")
		}
		wantSecrets(t, a, id, secret, "")
		mustToken(t, st, id, secret)
		status, err := a.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus", err)
		if len(status.Problems) != 0 {
			t.Errorf("ClientStatus after CoverClient: problems %v", status.Problems)
		}

		puts = calls.count(http.MethodPut)
		updated, err = a.CoverClient(t.Context(), id)
		mustNoErr(t, "CoverClient(again)", err)
		if updated || calls.count(http.MethodPut) != puts {
			t.Errorf("CoverClient(again): updated %v, want no update", updated)
		}
	})

	t.Run("a generation applies the policy to an uncovered client by itself", func(t *testing.T) {
		id, old := uncoveredClient(t, st, a)
		fresh, err := a.RegenerateSecret(t.Context(), id)
		mustNoErr(t, "RegenerateSecret", err)
		mustToken(t, st, id, old)
		mustToken(t, st, id, fresh)
		wantSecrets(t, a, id, fresh, old)
		updated, err := a.CoverClient(t.Context(), id)
		mustNoErr(t, "CoverClient", err)
		if updated {
			t.Errorf("CoverClient after a generation: updated, want no update")
		}
		wantSecrets(t, a, id, fresh, old)
	})
}

func TestRotationPolicyOfTheStackRealm(t *testing.T) {
	st := integration.Shared(t)
	got, err := newAdmin(t, adminConfig(st)).RotationPolicy(t.Context())
	mustNoErr(t, "RotationPolicy", err)
	if !got.FeatureEnabled || !got.Covered || len(got.Problems) != 0 {
		t.Errorf("RotationPolicy: got %+v, want the feature on, covered, no problems", got)
	}
	if want := "espmdm-secret-rotation/espmdm-secret-rotation"; got.Name != want {
		t.Errorf("Name = %q, want %q", got.Name, want)
	}
	if got.RotatedExpiration != st.RotationGrace || got.RotatedExpiration != 7*24*time.Hour {
		t.Errorf("RotatedExpiration = %v, want %v (the stack's grace, 7 days)", got.RotatedExpiration, st.RotationGrace)
	}
	if got.Expiration != 157680000*time.Second || got.RemainingRotation != 0 {
		t.Errorf("Expiration %v, RemainingRotation %v; want 157680000s and 0", got.Expiration, got.RemainingRotation)
	}
}

func TestRotationPolicyNeedsViewRealm(t *testing.T) {
	st := integration.Shared(t)
	cfg := adminConfig(st)
	cfg.ClientID, cfg.ClientSecret = st.OperatorClientID, st.OperatorClientSecret // no realm-management roles
	_, err := newAdmin(t, cfg).RotationPolicy(t.Context())
	if !errors.Is(err, model.ErrUnavailable) || !strings.Contains(err.Error(), "view-realm") {
		t.Fatalf("RotationPolicy without view-realm: got %v, want ErrUnavailable naming view-realm", err)
	}
}

// leaky answers the admin requests whose path ends in one of suffixes with
// a 400 whose error message quotes what was sent and a marker, as a
// misbehaving proxy or Keycloak might; everything else goes to Keycloak.
type leaky struct {
	suffixes []string
	marker   string
}

func (l *leaky) RoundTrip(r *http.Request) (*http.Response, error) {
	for _, s := range l.suffixes {
		if strings.Contains(r.URL.Path, "/admin/") && strings.HasSuffix(r.URL.Path, s) && r.Method != http.MethodDelete {
			var sent []byte
			if r.Body != nil {
				sent, _ = io.ReadAll(r.Body)
			}
			msg, _ := json.Marshal(map[string]string{"errorMessage": l.marker + " " + string(sent)})
			return &http.Response{StatusCode: http.StatusBadRequest, Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(bytes.NewReader(msg)), Request: r}, nil
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

// No error of the rotation calls quotes a secret, whatever Keycloak
// answers.
func TestRotationSecretsStayOutOfErrors(t *testing.T) {
	st := integration.Shared(t)
	a := newAdmin(t, adminConfig(st))
	id, secret := uncoveredClient(t, st, a)
	uuid := rawClient(t, st, id)["id"].(string)

	marker := "leaked-" + randomKey()
	cfg := adminConfig(st)
	cfg.HTTPClient = &http.Client{Transport: &leaky{suffixes: []string{"/client-secret/rotated", "/clients/" + uuid}, marker: marker}}
	l := newAdmin(t, cfg)
	const newSecret = "a-secret-to-set-0123456789abcdef"
	for name, err := range map[string]error{
		"Secrets":   func() error { _, err := l.Secrets(t.Context(), id); return err }(),
		"SetSecret": l.SetSecret(t.Context(), id, newSecret),
		"CoverClient": func() error {
			_, err := l.CoverClient(t.Context(), id)
			return err
		}(),
	} {
		if err == nil {
			t.Errorf("%s: no error from a 400", name)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, marker) || strings.Contains(msg, secret) || strings.Contains(msg, newSecret) {
			t.Errorf("%s: the error quotes the response or a secret: %q", name, msg)
		}
	}
	// Nothing changed meanwhile.
	wantSecrets(t, a, id, secret, "")
}
