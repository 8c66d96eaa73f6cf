package portstest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// RunIdentityProviderContract runs the contract of ports.IdentityProvider
// against the providers newIdP returns (once per subtest). Every subtest
// uses client ids with a unique model code and deletes its clients when it
// ends, so the provider may hold other clients.
func RunIdentityProviderContract(t *testing.T, newIdP func(t *testing.T) ports.IdentityProvider) {
	t.Helper()
	fixture := func(t *testing.T) idpFixture {
		return idpFixture{t: t, idp: newIdP(t), code: UniqueCode("ct_idp")}
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
		mustNoErr(t, "DeleteClient(missing)", x.idp.DeleteClient(t.Context(), id))
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
	code string
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
