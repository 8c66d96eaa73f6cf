package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Console users of the dev stack (SPEC §9): one holding the admin role,
// one the viewer role.
const (
	consoleAdminUser  = "console-admin"
	consoleViewerUser = "console-viewer"
)

// consoleLogin is what `espmdm dev` writes to its env file for the console.
type consoleLogin struct {
	URL                        string
	User, Password             string
	ViewerUser, ViewerPassword string
}

// consoleRedirect is the console's redirect URI for a server at base: the
// login and the logout both come back to /console/ exactly.
func consoleRedirect(base string) string { return strings.TrimRight(base, "/") + "/console/" }

// docsRedirect is the API docs page's (Swagger UI logs in with the same client).
func docsRedirect(base string) string { return strings.TrimRight(base, "/") + "/api/docs" }

// setupConsole prepares the realm for a console at base: the public client
// espmdm-console with base's exact redirect URI and web origin, and the two
// console users with fresh passwords.
func (s *realmSetup) setupConsole(ctx context.Context, base string) (consoleLogin, error) {
	l := consoleLogin{URL: consoleRedirect(base), User: consoleAdminUser, ViewerUser: consoleViewerUser,
		Password: randomPassword(), ViewerPassword: randomPassword()}
	if _, err := s.ensureClient(ctx, consoleClient([]string{l.URL, docsRedirect(base)})); err != nil {
		return l, err
	}
	if err := s.ensureUser(ctx, l.User, l.Password, setupAdminRole); err != nil {
		return l, err
	}
	if err := s.ensureUser(ctx, l.ViewerUser, l.ViewerPassword, setupViewerRole); err != nil {
		return l, err
	}
	return l, nil
}

type userRep struct {
	ID       string `json:"id"`
	Username string `json:"username"`
}

// ensureUser creates the realm user (or resets its password) and grants
// it the realm role. The profile is complete and the e-mail verified, so
// that Keycloak asks for nothing but the password at login.
func (s *realmSetup) ensureUser(ctx context.Context, username, password, role string) error {
	find := func() (*userRep, error) {
		var list []userRep
		if _, err := s.getJSON(ctx, "look up user "+username,
			s.realmPath("/users?"+url.Values{"username": {username}, "exact": {"true"}}.Encode()), &list); err != nil {
			return nil, err
		}
		for i := range list {
			if list[i].Username == username {
				return &list[i], nil
			}
		}
		return nil, nil
	}
	u, err := find()
	if err != nil {
		return err
	}
	cred := map[string]any{"type": "password", "value": password, "temporary": false}
	if u == nil {
		rep := map[string]any{
			"username": username, "enabled": true, "emailVerified": true,
			"email": username + "@espmdm.invalid", "firstName": "espmdm", "lastName": username,
			"credentials": []any{cred}, "requiredActions": []string{},
		}
		if _, _, err := s.call(ctx, "create user "+username, http.MethodPost, s.realmPath("/users"), rep); err != nil {
			return err
		}
		s.changed("created user %s", username)
		if u, err = find(); err != nil {
			return err
		}
		if u == nil {
			return fmt.Errorf("create user %s: Keycloak does not list it after creating it", username)
		}
	} else if _, _, err := s.call(ctx, "set the password of "+username, http.MethodPut,
		s.realmPath("/users/"+url.PathEscape(u.ID)+"/reset-password"), cred); err != nil {
		return err
	}
	mappingPath := s.realmPath("/users/" + url.PathEscape(u.ID) + "/role-mappings/realm")
	var have []roleRep
	if _, err := s.getJSON(ctx, "read the realm roles of "+username, mappingPath, &have); err != nil {
		return err
	}
	if slices.ContainsFunc(have, func(r roleRep) bool { return r.Name == role }) {
		return nil
	}
	var rr roleRep
	if _, err := s.getJSON(ctx, "read realm role "+role, s.realmPath("/roles/"+url.PathEscape(role)), &rr); err != nil {
		return err
	}
	if _, _, err := s.call(ctx, "grant realm role "+role+" to "+username, http.MethodPost, mappingPath, []roleRep{rr}); err != nil {
		return err
	}
	s.changed("granted %s the realm role %s", username, role)
	return nil
}

// randomPassword is 24 random characters from crypto/rand.
func randomPassword() string { return rand.Text()[:24] }

// consoleURLFlag adds BASE/console/ and BASE/api/docs to the console's
// redirect URIs.
type consoleURLFlag struct{ redirects *[]string }

func (f consoleURLFlag) String() string { return "" }
func (f consoleURLFlag) Type() string   { return "URL" }
func (f consoleURLFlag) Set(v string) error {
	u, err := url.Parse(strings.TrimSpace(v))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("want espmdm's public http(s) URL such as https://mdm.example.com")
	}
	*f.redirects = append(*f.redirects, consoleRedirect(strings.TrimSpace(v)), docsRedirect(strings.TrimSpace(v)))
	return nil
}
