package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"strings"

	"github.com/espmdm/espmdm/adapters/keycloak"
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
func setupConsole(ctx context.Context, s *keycloak.RealmSetup, base string) (consoleLogin, error) {
	l := consoleLogin{URL: consoleRedirect(base), User: consoleAdminUser, ViewerUser: consoleViewerUser,
		Password: randomPassword(), ViewerPassword: randomPassword()}
	if err := s.EnsureConsoleClient(ctx, []string{l.URL, docsRedirect(base)}); err != nil {
		return l, err
	}
	if err := s.EnsureUser(ctx, l.User, l.Password, keycloak.SetupAdminRole); err != nil {
		return l, err
	}
	if err := s.EnsureUser(ctx, l.ViewerUser, l.ViewerPassword, keycloak.SetupViewerRole); err != nil {
		return l, err
	}
	return l, nil
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
