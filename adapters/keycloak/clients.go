package keycloak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// createdAttr is the client attribute recording when espmdm created the
// client, in Unix seconds.
const createdAttr = "espmdm.created"

// clientRep is the part of Keycloak's ClientRepresentation the adapter reads.
type clientRep struct {
	ID                     string            `json:"id"`
	ClientID               string            `json:"clientId"`
	Enabled                bool              `json:"enabled"`
	ServiceAccountsEnabled bool              `json:"serviceAccountsEnabled"`
	Attributes             map[string]string `json:"attributes"`
	ProtocolMappers        []mapperRep       `json:"protocolMappers"`
}

// createdAt reads createdAttr; zero when absent or malformed.
func (c clientRep) createdAt() time.Time {
	s, err := strconv.ParseInt(c.Attributes[createdAttr], 10, 64)
	if err != nil || s <= 0 {
		return time.Time{}
	}
	return time.Unix(s, 0).UTC()
}

// mapperRep is Keycloak's ProtocolMapperRepresentation.
type mapperRep struct {
	ID             string            `json:"id,omitempty"`
	Name           string            `json:"name"`
	Protocol       string            `json:"protocol"`
	ProtocolMapper string            `json:"protocolMapper"`
	Config         map[string]string `json:"config"`
}

// flag is one top-level client setting a device client must have.
type flag struct {
	field   string
	want    any // bool or string
	problem string
}

// deviceFlags are the settings of SPEC §1: a confidential OpenID Connect
// client authenticating with its secret, with a service account and no
// browser or password flows.
var deviceFlags = []flag{
	{"enabled", true, "client is disabled"},
	{"protocol", "openid-connect", "protocol is not openid-connect"},
	{"publicClient", false, "client is public, not confidential"},
	{"bearerOnly", false, "client is bearer-only"},
	{"clientAuthenticatorType", "client-secret", "client authenticator is not client-secret"},
	{"serviceAccountsEnabled", true, "service accounts are disabled"},
	{"standardFlowEnabled", false, "standard flow is enabled"},
	{"implicitFlowEnabled", false, "implicit flow is enabled"},
	{"directAccessGrantsEnabled", false, "direct access grants are enabled"},
}

// offAttrs are grant switches kept in client attributes that must not be
// "true".
var offAttrs = []flag{
	{"oauth2.device.authorization.grant.enabled", "false", "device authorization grant is enabled"},
	{"oidc.ciba.grant.enabled", "false", "CIBA grant is enabled"},
}

// mapperSpec is a protocol mapper a device client must have. A mapper of
// the same type whose config has the same values for keys satisfies it.
type mapperSpec struct {
	rep     mapperRep
	keys    []string
	problem string
}

func (a *Admin) mapperSpecs() []mapperSpec {
	return []mapperSpec{
		{
			rep: mapperRep{
				Name: "espmdm-device-role", Protocol: "openid-connect", ProtocolMapper: "oidc-hardcoded-role-mapper",
				Config: map[string]string{"role": a.cfg.DeviceRole},
			},
			keys:    []string{"role"},
			problem: fmt.Sprintf("no hardcoded-role mapper for realm role %s", a.cfg.DeviceRole),
		},
		{
			rep: mapperRep{
				Name: "espmdm-device-audience", Protocol: "openid-connect", ProtocolMapper: "oidc-audience-mapper",
				Config: map[string]string{
					"included.custom.audience":  a.cfg.DeviceAudience,
					"access.token.claim":        "true",
					"id.token.claim":            "false",
					"introspection.token.claim": "true",
				},
			},
			keys:    []string{"included.custom.audience", "access.token.claim"},
			problem: fmt.Sprintf("no audience mapper adding %s to access tokens", a.cfg.DeviceAudience),
		},
	}
}

func (s mapperSpec) satisfiedBy(m mapperRep) bool {
	if m.ProtocolMapper != s.rep.ProtocolMapper {
		return false
	}
	for _, k := range s.keys {
		if m.Config[k] != s.rep.Config[k] {
			return false
		}
	}
	return true
}

// newClient is the create representation of a device client.
func (a *Admin) newClient(clientID string, now time.Time) map[string]any {
	rep := map[string]any{"clientId": clientID}
	for _, f := range deviceFlags {
		rep[f.field] = f.want
	}
	attrs := map[string]string{createdAttr: strconv.FormatInt(now.Unix(), 10)}
	for _, f := range offAttrs {
		attrs[f.field] = f.want.(string)
	}
	rep["attributes"] = attrs
	var mappers []mapperRep
	for _, s := range a.mapperSpecs() {
		mappers = append(mappers, s.rep)
	}
	rep["protocolMappers"] = mappers
	return rep
}

// found is a client as Keycloak returned it: typed for reading, and whole
// for GET-modify-PUT (so fields the adapter does not know survive).
type found struct {
	rep clientRep
	raw map[string]any
}

// forUpdate returns a copy of the representation to PUT back. It never
// includes the secret (a PUT stores whatever secret it carries, and a
// caller without manage-clients reads a mask), the protocol mappers
// (managed through their own endpoints) nor the attributes in which
// Keycloak's secret rotation keeps its state (client.secret.*): a PUT
// leaves attributes it does not name alone, while naming them would write
// back what was read, reviving a rotated secret invalidated meanwhile.
func (c *found) forUpdate() map[string]any {
	m := maps.Clone(c.raw)
	delete(m, "secret")
	delete(m, "protocolMappers")
	if old, ok := m["attributes"].(map[string]any); ok {
		attrs := make(map[string]any, len(old))
		for k, v := range old {
			if !strings.HasPrefix(k, rotationAttrPrefix) {
				attrs[k] = v
			}
		}
		m["attributes"] = attrs
	}
	return m
}

// lookup finds a client by its exact clientId; nil when there is none.
func (a *Admin) lookup(ctx context.Context, op, clientID string) (*found, error) {
	q := url.Values{"clientId": {clientID}} // exact match without search=true
	req := request{op: op, method: http.MethodGet, url: a.adminBase + "/clients?" + q.Encode(), auth: true, sensitive: true}
	resp, err := a.do(ctx, req)
	if err != nil {
		return nil, realmMissing(err)
	}
	var raws []json.RawMessage
	if err := resp.decode(req, &raws); err != nil {
		return nil, err
	}
	for _, raw := range raws {
		var c found
		if err := json.Unmarshal(raw, &c.rep); err != nil {
			return nil, unavailable(op, errors.New("undecodable client representation"))
		}
		if c.rep.ClientID != clientID {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber() // numbers go back unchanged
		if err := dec.Decode(&c.raw); err != nil {
			return nil, unavailable(op, errors.New("undecodable client representation"))
		}
		if c.rep.ID == "" {
			return nil, unavailable(op, fmt.Errorf("keycloak returned client %s without an id", clientID))
		}
		return &c, nil
	}
	return nil, nil
}

// mustLookup is lookup with a missing client as model.ErrNotFound.
// getByUUID reads one client's representation; a missing one is
// model.ErrNotFound.
func (a *Admin) getByUUID(ctx context.Context, op, uuid string) (*found, error) {
	req := request{op: op, method: http.MethodGet, url: a.clientURL(uuid), auth: true, sensitive: true}
	resp, err := a.do(ctx, req)
	if err != nil {
		return nil, err
	}
	var c found
	if err := resp.decode(req, &c.rep); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(resp.body))
	dec.UseNumber() // numbers go back unchanged
	if err := dec.Decode(&c.raw); err != nil || c.rep.ID != uuid {
		return nil, unavailable(op, errors.New("undecodable client representation"))
	}
	return &c, nil
}

func (a *Admin) mustLookup(ctx context.Context, op, clientID string) (*found, error) {
	c, err := a.lookup(ctx, op, clientID)
	if err == nil && c == nil {
		err = fmt.Errorf("%s: no such client: %w", op, model.ErrNotFound)
	}
	return c, err
}

// status describes c (nil: missing) as ClientStatus reports it.
func (a *Admin) status(clientID string, c *found) model.IdentityStatus {
	st := model.IdentityStatus{ClientID: clientID}
	if c == nil {
		st.Problems = []string{"client does not exist"}
		return st
	}
	st.Exists = true
	st.Enabled = c.rep.Enabled
	st.ServiceAccount = c.rep.ServiceAccountsEnabled
	st.Problems = append(badFlags(c), a.missingMappers(c)...)
	return st
}

// badFlags lists the flag and attribute problems of c.
func badFlags(c *found) []string {
	var problems []string
	for _, f := range deviceFlags {
		if !sameValue(c.raw[f.field], f.want) {
			problems = append(problems, f.problem)
		}
	}
	for _, f := range offAttrs {
		if c.rep.Attributes[f.field] == "true" {
			problems = append(problems, f.problem)
		}
	}
	return problems
}

// sameValue compares a decoded JSON value with a wanted bool or string; a
// missing value counts as false or "".
func sameValue(got, want any) bool {
	switch w := want.(type) {
	case bool:
		b, _ := got.(bool)
		return b == w
	case string:
		s, _ := got.(string)
		return s == w
	}
	return false
}

// missingMappers lists the mapper problems of c.
func (a *Admin) missingMappers(c *found) []string {
	var problems []string
	for _, s := range a.mapperSpecs() {
		if _, ok := s.in(c.rep.ProtocolMappers); !ok {
			problems = append(problems, s.problem)
		}
	}
	return problems
}

// in reports whether ms satisfy s, else returns the mapper of s's name to
// correct (nil: add a new one).
func (s mapperSpec) in(ms []mapperRep) (*mapperRep, bool) {
	var named *mapperRep
	for i, m := range ms {
		if s.satisfiedBy(m) {
			return nil, true
		}
		if m.Name == s.rep.Name {
			named = &ms[i]
		}
	}
	return named, false
}

// repair corrects c's flags (GET-modify-PUT without the secret) and mappers.
func (a *Admin) repair(ctx context.Context, op string, c *found) error {
	if len(badFlags(c)) > 0 {
		rep := c.forUpdate()
		for _, f := range deviceFlags {
			rep[f.field] = f.want
		}
		attrs := map[string]any{}
		if old, ok := rep["attributes"].(map[string]any); ok {
			attrs = maps.Clone(old)
		}
		for _, f := range offAttrs {
			attrs[f.field] = f.want
		}
		rep["attributes"] = attrs
		if _, err := a.do(ctx, request{op: op, method: http.MethodPut, url: a.clientURL(c.rep.ID), body: rep, auth: true, sensitive: true}); err != nil {
			return err
		}
		// Keycloak gives a client it turns confidential a secret itself.
	}
	for _, s := range a.mapperSpecs() {
		named, ok := s.in(c.rep.ProtocolMappers)
		switch {
		case ok:
			continue
		case named != nil:
			m := s.rep
			m.ID = named.ID
			if _, err := a.do(ctx, request{op: op, method: http.MethodPut, url: a.clientURL(c.rep.ID, "protocol-mappers", "models", url.PathEscape(named.ID)), body: m, auth: true}); err != nil {
				return err
			}
		default:
			if _, err := a.do(ctx, request{op: op, method: http.MethodPost, url: a.clientURL(c.rep.ID, "protocol-mappers", "models"), body: s.rep, auth: true}); err != nil {
				return err
			}
		}
	}
	return nil
}

// uuidFromLocation returns the client UUID a create's Location header names
// ({...}/clients/{uuid}); "" when it names none.
func uuidFromLocation(loc string) string {
	u, err := url.Parse(loc)
	if err != nil {
		return ""
	}
	dir, id := path.Split(strings.TrimSuffix(u.Path, "/"))
	if id == "" || !strings.HasSuffix(dir, "/clients/") {
		return ""
	}
	return id
}
