package portstest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Authenticator tells whether a secret authenticates a client now (in
// Keycloak: whether a client_credentials grant with it succeeds). The
// contract needs it to check which secrets work: the providers newIdP
// returns to RunIdentityProviderContract must implement it. The fake
// IdentityProvider does; an adapter's test wraps its provider with a real
// token request.
type Authenticator interface {
	Authenticates(clientID, secret string) bool
}

// RunIdentityProviderContract runs the contract of ports.IdentityProvider
// against the providers newIdP returns (once per subtest), which must also
// implement Authenticator. Every subtest uses client ids with a unique
// model code and deletes its clients when it ends, so the provider may hold
// other clients.
//
// The rotation subtests hold with and without a secret-rotation policy:
// they ask RotationPolicy which one the provider has and expect the old
// secret to survive a generation exactly when the policy is in force
// (FeatureEnabled, Covered and a positive RotatedExpiration). A provider
// that offers ports.CoveredSecretsReader is held to CoveredSecrets
// agreeing with CoverClient followed by Secrets.
func RunIdentityProviderContract(t *testing.T, newIdP func(t *testing.T) ports.IdentityProvider) {
	t.Helper()
	fixture := func(t *testing.T) idpFixture {
		t.Helper()
		idp := newIdP(t)
		auth, ok := idp.(Authenticator)
		if !ok {
			t.Fatalf("the provider under test (%T) does not implement portstest.Authenticator", idp)
		}
		return idpFixture{t: t, idp: idp, auth: auth, code: UniqueCode("ct_idp")}
	}

	t.Run("Ping answers", func(t *testing.T) {
		x := fixture(t)
		mustNoErr(t, "Ping", x.idp.Ping(t.Context()))
	})

	t.Run("CreateClient makes a healthy client whose secret ClientSecret returns", func(t *testing.T) {
		x := fixture(t)
		id := x.clientID()
		before := time.Now()
		secret := x.create(id)
		if secret == "" {
			t.Fatalf("CreateClient returned an empty secret")
		}
		got, err := x.idp.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret", err)
		if got != secret {
			t.Errorf("ClientSecret differs from the secret CreateClient returned")
		}
		st, err := x.idp.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus", err)
		if st.ClientID != id || !st.Exists || !st.Enabled || !st.ServiceAccount || len(st.Problems) != 0 {
			t.Errorf("ClientStatus: got %+v, want an existing, enabled service-account client %s with no problems", st, id)
		}
		list, err := x.idp.ListDeviceClients(t.Context())
		mustNoErr(t, "ListDeviceClients", err)
		i := slices.IndexFunc(list, func(c model.ClientInfo) bool { return c.ClientID == id })
		if i < 0 {
			t.Fatalf("ListDeviceClients: %s missing from %d clients", id, len(list))
		}
		// CreatedAt is recorded by the provider (its clock): allow for skew.
		if ca := list[i].CreatedAt; ca.IsZero() || ca.Before(before.Add(-5*time.Minute)) || ca.After(time.Now().Add(5*time.Minute)) {
			t.Errorf("ListDeviceClients: CreatedAt of a new client = %v, want about %v", ca, before)
		}
	})

	t.Run("CreateClient of an existing client is ErrConflict", func(t *testing.T) {
		x := fixture(t)
		id := x.clientID()
		secret := x.create(id)
		_, err := x.idp.CreateClient(t.Context(), id)
		wantErrIs(t, "CreateClient(again)", err, model.ErrConflict)
		got, err := x.idp.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret", err)
		if got != secret {
			t.Errorf("the refused CreateClient changed the existing secret")
		}
	})

	t.Run("RegenerateSecret and SetSecret change the secret", func(t *testing.T) {
		x := fixture(t)
		id := x.clientID()
		old := x.create(id)
		fresh, err := x.idp.RegenerateSecret(t.Context(), id)
		mustNoErr(t, "RegenerateSecret", err)
		if fresh == "" || fresh == old {
			t.Errorf("RegenerateSecret returned an empty or unchanged secret")
		}
		got, err := x.idp.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret", err)
		if got != fresh {
			t.Errorf("ClientSecret after RegenerateSecret is not the new secret")
		}
		mustNoErr(t, "SetSecret", x.idp.SetSecret(t.Context(), id, old))
		got, err = x.idp.ClientSecret(t.Context(), id)
		mustNoErr(t, "ClientSecret", err)
		if got != old {
			t.Errorf("ClientSecret after SetSecret(old) is not the old secret")
		}
	})

	t.Run("DeleteClient removes the client and is idempotent", func(t *testing.T) {
		x := fixture(t)
		id := x.clientID()
		x.create(id)
		keep := x.clientID()
		x.create(keep)
		mustNoErr(t, "DeleteClient", x.idp.DeleteClient(t.Context(), id))
		mustNoErr(t, "DeleteClient(again)", x.idp.DeleteClient(t.Context(), id))
		st, err := x.idp.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus(deleted)", err)
		if st.Exists {
			t.Errorf("ClientStatus(deleted): got %+v, want Exists false", st)
		}
		list, err := x.idp.ListDeviceClients(t.Context())
		mustNoErr(t, "ListDeviceClients", err)
		ids := clientIDs(list)
		if slices.Contains(ids, id) || !slices.Contains(ids, keep) {
			t.Errorf("ListDeviceClients after deleting %s: has deleted %v, has kept %v",
				id, slices.Contains(ids, id), slices.Contains(ids, keep))
		}
	})

	t.Run("a missing client: status says so, secrets are ErrNotFound", func(t *testing.T) {
		x := fixture(t)
		id := x.clientID()
		st, err := x.idp.ClientStatus(t.Context(), id)
		mustNoErr(t, "ClientStatus", err)
		if st.Exists || st.ClientID != id {
			t.Errorf("ClientStatus(missing): got %+v, want ClientID %s and Exists false", st, id)
		}
		_, err = x.idp.ClientSecret(t.Context(), id)
		wantErrIs(t, "ClientSecret", err, model.ErrNotFound)
		_, err = x.idp.RegenerateSecret(t.Context(), id)
		wantErrIs(t, "RegenerateSecret", err, model.ErrNotFound)
		wantErrIs(t, "SetSecret", x.idp.SetSecret(t.Context(), id, "whatever-secret-value"), model.ErrNotFound)
		_, err = x.idp.Secrets(t.Context(), id)
		wantErrIs(t, "Secrets", err, model.ErrNotFound)
		wantErrIs(t, "InvalidateRotatedSecret", x.idp.InvalidateRotatedSecret(t.Context(), id), model.ErrNotFound)
		_, err = x.idp.CoverClient(t.Context(), id)
		wantErrIs(t, "CoverClient", err, model.ErrNotFound)
		mustNoErr(t, "DeleteClient(missing)", x.idp.DeleteClient(t.Context(), id))
		if x.auth.Authenticates(id, "whatever-secret-value") {
			t.Errorf("a missing client authenticates")
		}
	})

	t.Run("RotationPolicy answers consistently", func(t *testing.T) {
		x := fixture(t)
		pol := x.policy()
		if pol.Covered && pol.Name == "" {
			t.Errorf("RotationPolicy: Covered without the covering policy's Name: %+v", pol)
		}
		if pol.FeatureEnabled && pol.Covered && (pol.Expiration <= 0 || pol.RotatedExpiration < 0 || pol.RotatedExpiration > pol.Expiration) {
			t.Errorf("RotationPolicy: periods %+v, want 0 <= RotatedExpiration <= Expiration, Expiration > 0", pol)
		}
		if (!pol.FeatureEnabled || !pol.Covered) && len(pol.Problems) == 0 {
			t.Errorf("RotationPolicy: %+v without a problem saying what is missing", pol)
		}
	})

	t.Run("a generation keeps the old secret as the rotated one exactly under a policy; invalidating ends it", func(t *testing.T) {
		x := fixture(t)
		grace := x.grace()
		id := x.clientID()
		old := x.create(id)
		x.wantSecrets(id, model.Secrets{Current: old})
		x.wantAuth(id, old, true)

		fresh, err := x.idp.RegenerateSecret(t.Context(), id)
		mustNoErr(t, "RegenerateSecret", err)
		x.wantAuth(id, fresh, true)
		x.wantAuth(id, old, grace)
		want := model.Secrets{Current: fresh}
		if grace {
			want.Rotated = old
		}
		x.wantSecrets(id, want)

		mustNoErr(t, "InvalidateRotatedSecret", x.idp.InvalidateRotatedSecret(t.Context(), id))
		x.wantAuth(id, old, false)
		x.wantAuth(id, fresh, true)
		x.wantSecrets(id, model.Secrets{Current: fresh})
		mustNoErr(t, "InvalidateRotatedSecret(again)", x.idp.InvalidateRotatedSecret(t.Context(), id))
		x.wantAuth(id, fresh, true)
	})

	t.Run("SecretState dates a generation by the provider's clock, which Now reads", func(t *testing.T) {
		x := fixture(t)
		grace := x.grace()
		id := x.clientID()
		x.create(id)
		before, err := x.idp.Now(t.Context())
		mustNoErr(t, "Now", err)
		if d := time.Since(before); d < -5*time.Minute || d > 5*time.Minute || before.Nanosecond() != 0 {
			t.Fatalf("Now = %v: want whole seconds, about the wall clock", before)
		}
		_, err = x.idp.RegenerateSecret(t.Context(), id)
		mustNoErr(t, "RegenerateSecret", err)
		st, err := x.idp.SecretState(t.Context(), id)
		mustNoErr(t, "SecretState", err)
		after, err := x.idp.Now(t.Context())
		mustNoErr(t, "Now", err)
		if st.CreatedAt.Before(before) || st.CreatedAt.After(after) {
			t.Errorf("SecretState.CreatedAt = %v, want between the provider's Now before (%v) and after (%v) the generation",
				st.CreatedAt, before, after)
		}
		if st.Rotated != grace {
			t.Errorf("SecretState.Rotated after a generation = %v, want %v (the policy in force)", st.Rotated, grace)
		}
		mustNoErr(t, "InvalidateRotatedSecret", x.idp.InvalidateRotatedSecret(t.Context(), id))
		if st, err := x.idp.SecretState(t.Context(), id); err != nil || st.Rotated {
			t.Errorf("SecretState after invalidating the rotated secret: %+v, %v; want none rotated", st, err)
		}
		_, err = x.idp.SecretState(t.Context(), x.clientID())
		wantErrIs(t, "SecretState(missing)", err, model.ErrNotFound)
	})

	t.Run("SetSecret after a generation makes its secret the only valid one", func(t *testing.T) {
		x := fixture(t)
		id := x.clientID()
		old := x.create(id)
		fresh, err := x.idp.RegenerateSecret(t.Context(), id)
		mustNoErr(t, "RegenerateSecret", err)
		mustNoErr(t, "SetSecret(old)", x.idp.SetSecret(t.Context(), id, old))
		x.wantAuth(id, old, true)
		x.wantAuth(id, fresh, false)
		x.wantSecrets(id, model.Secrets{Current: old})
	})

	t.Run("CoverClient keeps the secret; a created client is covered already", func(t *testing.T) {
		x := fixture(t)
		inForce := x.grace()
		id := x.clientID()
		secret := x.create(id)
		for i := range 2 {
			updated, err := x.idp.CoverClient(t.Context(), id)
			mustNoErr(t, "CoverClient", err)
			if inForce && updated {
				t.Errorf("CoverClient #%d of a client created under the policy: updated, want no update", i+1)
			}
		}
		x.wantSecrets(id, model.Secrets{Current: secret})
		x.wantAuth(id, secret, true)
		got, err := x.coveredSecrets(id)
		mustNoErr(t, "CoveredSecrets", err)
		if got != (model.Secrets{Current: secret}) {
			t.Error("CoveredSecrets did not return the current secret alone")
		}
		x.wantSecrets(id, model.Secrets{Current: secret})
		if inForce {
			// Covered, a generation keeps the old secret as the rotated one.
			fresh, err := x.idp.RegenerateSecret(t.Context(), id)
			mustNoErr(t, "RegenerateSecret", err)
			x.wantAuth(id, secret, true)
			x.wantAuth(id, fresh, true)
			if got, err := x.coveredSecrets(id); err != nil || got != (model.Secrets{Current: fresh, Rotated: secret}) {
				t.Errorf("CoveredSecrets after a generation: %v, want the new secret and the old one as rotated", err)
			}
			if ci := x.listed(id); !ci.Covered || !ci.Rotated {
				t.Errorf("ListDeviceClients after a generation: covered %t, rotated %t; want both", ci.Covered, ci.Rotated)
			}
			mustNoErr(t, "InvalidateRotatedSecret", x.idp.InvalidateRotatedSecret(t.Context(), id))
			if got, err := x.coveredSecrets(id); err != nil || got != (model.Secrets{Current: fresh}) {
				t.Errorf("CoveredSecrets after invalidating the rotated secret: %v, want the new secret alone", err)
			}
			if ci := x.listed(id); !ci.Covered || ci.Rotated {
				t.Errorf("ListDeviceClients after invalidating the rotated secret: covered %t, rotated %t; want covered only", ci.Covered, ci.Rotated)
			}
		}
		_, err = x.coveredSecrets(x.clientID())
		wantErrIs(t, "CoveredSecrets(missing)", err, model.ErrNotFound)
	})

	t.Run("RepairClient creates a missing client and keeps an existing secret", func(t *testing.T) {
		x := fixture(t)
		missing := x.clientID()
		x.t.Cleanup(func() { _ = x.idp.DeleteClient(context.Background(), missing) })
		st, err := x.idp.RepairClient(t.Context(), missing)
		mustNoErr(t, "RepairClient(missing)", err)
		if st.ClientID != missing || !st.Exists || !st.Enabled || !st.ServiceAccount || len(st.Problems) != 0 {
			t.Errorf("RepairClient(missing): got %+v, want a healthy client", st)
		}
		if s, err := x.idp.ClientSecret(t.Context(), missing); err != nil || s == "" {
			t.Errorf("ClientSecret after repair: %v (empty: %v)", err, s == "")
		}

		existing := x.clientID()
		secret := x.create(existing)
		st, err = x.idp.RepairClient(t.Context(), existing)
		mustNoErr(t, "RepairClient(existing)", err)
		if !st.Exists || len(st.Problems) != 0 {
			t.Errorf("RepairClient(existing): got %+v, want a healthy client", st)
		}
		got, err := x.idp.ClientSecret(t.Context(), existing)
		mustNoErr(t, "ClientSecret", err)
		if got != secret {
			t.Errorf("RepairClient changed the secret of an existing client")
		}
		st, err = x.idp.ClientStatus(t.Context(), existing)
		mustNoErr(t, "ClientStatus", err)
		if !st.Exists || len(st.Problems) != 0 {
			t.Errorf("ClientStatus after repair: got %+v", st)
		}
	})
}

type idpFixture struct {
	t    *testing.T
	idp  ports.IdentityProvider
	auth Authenticator
	code string
}

// listed is the ListDeviceClients entry of clientID (zero when absent, an
// error of the test).
func (x idpFixture) listed(clientID string) model.ClientInfo {
	x.t.Helper()
	list, err := x.idp.ListDeviceClients(x.t.Context())
	mustNoErr(x.t, "ListDeviceClients", err)
	for _, c := range list {
		if c.ClientID == clientID {
			return c
		}
	}
	x.t.Errorf("ListDeviceClients: %s missing", clientID)
	return model.ClientInfo{}
}

// coveredSecrets is CoveredSecrets where the provider offers
// ports.CoveredSecretsReader, else what the rotation does without it:
// CoverClient, then Secrets.
func (x idpFixture) coveredSecrets(clientID string) (model.Secrets, error) {
	if r, ok := x.idp.(ports.CoveredSecretsReader); ok {
		return r.CoveredSecrets(x.t.Context(), clientID)
	}
	if _, err := x.idp.CoverClient(x.t.Context(), clientID); err != nil {
		return model.Secrets{}, err
	}
	return x.idp.Secrets(x.t.Context(), clientID)
}

func (x idpFixture) policy() model.RotationPolicy {
	x.t.Helper()
	pol, err := x.idp.RotationPolicy(x.t.Context())
	mustNoErr(x.t, "RotationPolicy", err)
	return pol
}

// grace reports whether a generation keeps the old secret valid.
func (x idpFixture) grace() bool {
	x.t.Helper()
	pol := x.policy()
	return pol.FeatureEnabled && pol.Covered && pol.RotatedExpiration > 0
}

func (x idpFixture) wantAuth(clientID, secret string, want bool) {
	x.t.Helper()
	if got := x.auth.Authenticates(clientID, secret); got != want {
		x.t.Errorf("%s: a secret authenticates: %v, want %v", clientID, got, want)
	}
}

// wantSecrets compares Secrets with want without quoting either (they are
// secrets, and the failure says which part differs).
func (x idpFixture) wantSecrets(clientID string, want model.Secrets) {
	x.t.Helper()
	got, err := x.idp.Secrets(x.t.Context(), clientID)
	mustNoErr(x.t, "Secrets", err)
	if got.Current != want.Current {
		x.t.Errorf("Secrets(%s).Current is not the expected secret", clientID)
	}
	if got.Rotated != want.Rotated {
		x.t.Errorf("Secrets(%s).Rotated differs (empty: got %v, want %v)", clientID, got.Rotated == "", want.Rotated == "")
	}
}

func (x idpFixture) clientID() string { return model.ClientID(x.code, randomKey()) }

// create creates clientID, deleting it when the test ends.
func (x idpFixture) create(clientID string) string {
	x.t.Helper()
	x.t.Cleanup(func() { _ = x.idp.DeleteClient(context.Background(), clientID) })
	secret, err := x.idp.CreateClient(x.t.Context(), clientID)
	mustNoErr(x.t, "CreateClient", err)
	return secret
}

func clientIDs(cs []model.ClientInfo) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.ClientID)
	}
	return out
}
