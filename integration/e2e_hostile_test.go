package integration_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
)

// Hostile input against a running espmdm with the real Keycloak: whatever a
// client sends, the answer is a 4xx problem+json — never a 5xx, a hang or a
// crash — and a request that must be refused is.

// hostileCase is one request and the answer it must get: want is the exact
// status, 0 for "any 4xx", or mayAccept for "any status below 500" (input
// that is odd but valid).
type hostileCase struct {
	name    string
	method  string
	path    string
	token   string
	body    []byte
	headers []string
	want    int
	// raw sends the request line and headers as given (net/http refuses
	// to send some of them).
	raw bool
}

// check sends c and fails unless the answer is a 4xx problem+json (of
// c.want when set). It returns the status.
func (s *server) check(t *testing.T, c hostileCase) int {
	t.Helper()
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, s.base+c.path, body)
	if err != nil || c.raw {
		// Some paths cannot even be sent by net/http: send them raw.
		return s.checkRaw(t, c)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(c.headers); i += 2 {
		req.Header.Set(c.headers[i], c.headers[i+1])
	}
	resp, err := s.client.Do(req)
	if err != nil {
		t.Errorf("%s: no answer: %v", c.name, err)
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	wantRefusal(t, c, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	return resp.StatusCode
}

// checkRaw writes the request line as given, for paths net/http refuses to
// build.
func (s *server) checkRaw(t *testing.T, c hostileCase) int {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var hdr strings.Builder
	fmt.Fprintf(&hdr, "%s %s HTTP/1.1\r\nHost: espmdm\r\nConnection: close\r\nContent-Length: %d\r\n", c.method, c.path, len(c.body))
	if c.token != "" {
		fmt.Fprintf(&hdr, "Authorization: Bearer %s\r\n", c.token)
	}
	for i := 0; i+1 < len(c.headers); i += 2 {
		fmt.Fprintf(&hdr, "%s: %s\r\n", c.headers[i], c.headers[i+1])
	}
	hdr.WriteString("\r\n")
	if _, err := io.WriteString(conn, hdr.String()); err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write(c.body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Errorf("%s: no answer: %v", c.name, err)
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	wantRefusal(t, c, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	return resp.StatusCode
}

// mayAccept marks a case whose input is odd but valid.
const mayAccept = -1

func wantRefusal(t *testing.T, c hostileCase, status int, contentType string, body []byte) {
	t.Helper()
	if c.want == mayAccept && status < 400 {
		return
	}
	switch {
	case c.want == mayAccept && status > 499:
		t.Errorf("%s: %d, want an answer below 500: %.300s", c.name, status, body)
	case c.want > 0 && status != c.want:
		t.Errorf("%s: %d, want %d: %.300s", c.name, status, c.want, body)
	case status < 400 || status > 499:
		t.Errorf("%s: %d, want a 4xx: %.300s", c.name, status, body)
	case !strings.HasPrefix(contentType, "application/problem+json"):
		t.Errorf("%s: %d with Content-Type %q, want application/problem+json", c.name, status, contentType)
	default:
		var p struct {
			Type   string `json:"type"`
			Status int    `json:"status"`
		}
		if err := json.Unmarshal(body, &p); err != nil || p.Status != status || p.Type == "" {
			t.Errorf("%s: problem body %.300s does not describe the %d", c.name, body, status)
		}
	}
}

// jwtParts splits a compact JWT into its decoded header and claims.
func jwtParts(t *testing.T, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT")
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, claims
}

func b64JSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// realmKey is the realm's RS256 signing key as its JWKS serves it.
func realmKey(t *testing.T, st *integration.Stack) (kid string, pub *rsa.PublicKey) {
	t.Helper()
	resp, err := http.Get(st.IssuerURL + "/protocol/openid-connect/certs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct {
			Kid, Kty, Alg, Use, N, E string
		} `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	for _, k := range set.Keys {
		if k.Kty == "RSA" && k.Alg == "RS256" && k.Use == "sig" {
			n, _ := base64.RawURLEncoding.DecodeString(k.N)
			e, _ := base64.RawURLEncoding.DecodeString(k.E)
			return k.Kid, &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		}
	}
	t.Fatal("no RS256 signing key in the realm's JWKS")
	return "", nil
}

// forgeries are tokens built from a real one (its claims, its kid) that
// espmdm must refuse; each is named by the attack.
func forgeries(t *testing.T, st *integration.Stack, real string) map[string]string {
	t.Helper()
	header, cl := jwtParts(t, real)
	kid, pub := realmKey(t, st)
	own, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	with := func(change map[string]any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for k, v := range cl {
			c[k] = v
		}
		for k, v := range change {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	sign := func(m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
		tk := jwt.NewWithClaims(m, c)
		tk.Header["kid"] = kid
		s, err := tk.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// alterPayload keeps the real header and signature over a changed
	// payload.
	parts := strings.Split(real, ".")
	alterPayload := func(change map[string]any) string {
		return parts[0] + "." + b64JSON(t, with(change)) + "." + parts[2]
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	now := time.Now()
	out := map[string]string{
		"alg none":                 b64JSON(t, map[string]any{"alg": "none", "typ": "JWT", "kid": header["kid"]}) + "." + b64JSON(t, with(nil)) + ".",
		"alg None, signature kept": b64JSON(t, map[string]any{"alg": "None", "kid": header["kid"]}) + "." + parts[1] + "." + parts[2],
		"HS256 keyed with the realm's public key (PEM)": sign(jwt.SigningMethodHS256, pemKey, kid, with(nil)),
		"HS256 keyed with the realm's public key (DER)": sign(jwt.SigningMethodHS256, der, kid, with(nil)),
		"signed by another key under the realm's kid":   sign(jwt.SigningMethodRS256, own, kid, with(nil)),
		"unknown kid":                       sign(jwt.SigningMethodRS256, own, "kid-"+randHex(8), with(nil)),
		"no kid":                            sign(jwt.SigningMethodRS256, own, "", with(nil)),
		"expired (payload altered)":         alterPayload(map[string]any{"exp": now.Add(-time.Hour).Unix()}),
		"future nbf (payload altered)":      alterPayload(map[string]any{"nbf": now.Add(time.Hour).Unix()}),
		"future nbf (own key)":              sign(jwt.SigningMethodRS256, own, kid, with(map[string]any{"nbf": now.Add(time.Hour).Unix()})),
		"wrong iss (payload altered)":       alterPayload(map[string]any{"iss": "https://evil.example.com/realms/iot"}),
		"wrong aud (payload altered)":       alterPayload(map[string]any{"aud": "someone-else"}),
		"no exp (payload altered)":          alterPayload(map[string]any{"exp": nil}),
		"azp of another model (altered)":    alterPayload(map[string]any{"azp": "iotdevice-nosuchmodel-abcd1234"}),
		"signature truncated":               real[:len(real)-10],
		"signature of another token":        parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 256)),
		"two parts":                         parts[0] + "." + parts[1],
		"four parts":                        real + "." + parts[2],
		"garbage base64":                    "!!!.???.***",
		"header not JSON":                   base64.RawURLEncoding.EncodeToString([]byte("nope")) + "." + parts[1] + "." + parts[2],
		"12 KiB token":                      strings.Repeat("A", 12<<10),
		"RS256 header, ES256 length sig":    parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 64)),
		"exp as a string (payload altered)": alterPayload(map[string]any{"exp": "tomorrow"}),
	}
	return out
}

// masterToken is a master-realm admin token (the stack's bootstrap admin),
// for creating a throwaway realm.
func masterToken(t *testing.T, st *integration.Stack) string {
	t.Helper()
	resp, err := http.PostForm(st.KeycloakURL+"/realms/master/protocol/openid-connect/token", url.Values{
		"grant_type": {"password"}, "client_id": {"admin-cli"},
		"username": {st.KeycloakAdminUser}, "password": {st.KeycloakAdminPassword},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
		t.Fatalf("master admin token: %s %v", resp.Status, err)
	}
	return body.AccessToken
}

func keycloakAdmin(t *testing.T, st *integration.Stack, tok, method, path string, body any) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, st.KeycloakURL+"/admin/realms"+path, r)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// otherRealmTokens creates a throwaway realm in the shared Keycloak with a
// client named like a real device (and the device audience), and one whose
// service account holds the admin role, and returns their valid,
// Keycloak-signed tokens. The realm is deleted when the test ends.
func otherRealmTokens(t *testing.T, s *server, deviceClientID string) (device, admin string) {
	t.Helper()
	st := s.st
	realm := "hostile-" + randHex(4)
	mt := masterToken(t, st)
	if code, b := keycloakAdmin(t, st, mt, http.MethodPost, "", map[string]any{"realm": realm, "enabled": true}); code != http.StatusCreated {
		t.Fatalf("create realm %s: %d %s", realm, code, b)
	}
	t.Cleanup(func() { keycloakAdmin(t, st, masterToken(t, st), http.MethodDelete, "/"+realm, nil) })
	if code, b := keycloakAdmin(t, st, mt, http.MethodPost, "/"+realm+"/roles", map[string]any{"name": s.cfg.AdminRole}); code != http.StatusCreated {
		t.Fatalf("create role: %d %s", code, b)
	}
	client := func(clientID string) string {
		secret := "s-" + randHex(16)
		code, b := keycloakAdmin(t, st, mt, http.MethodPost, "/"+realm+"/clients", map[string]any{
			"clientId": clientID, "enabled": true, "publicClient": false, "secret": secret,
			"serviceAccountsEnabled": true, "standardFlowEnabled": false, "directAccessGrantsEnabled": false,
			"protocolMappers": []map[string]any{{
				"name": "aud", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
				"config": map[string]string{"included.custom.audience": s.cfg.DeviceAudience, "access.token.claim": "true"},
			}},
		})
		if code != http.StatusCreated {
			t.Fatalf("create client %s: %d %s", clientID, code, b)
		}
		s.keep(secret)
		return secret
	}
	tokenOf := func(clientID, secret string) string {
		resp, err := http.PostForm(st.KeycloakURL+"/realms/"+realm+"/protocol/openid-connect/token", url.Values{
			"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			AccessToken string `json:"access_token"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.AccessToken == "" {
			t.Fatalf("token of %s in %s: %s", clientID, realm, resp.Status)
		}
		s.keep(body.AccessToken)
		return body.AccessToken
	}
	device = tokenOf(deviceClientID, client(deviceClientID))

	opSecret := client("operator")
	code, b := keycloakAdmin(t, st, mt, http.MethodGet, "/"+realm+"/clients?clientId=operator", nil)
	var found []struct{ ID string }
	if code != http.StatusOK || json.Unmarshal(b, &found) != nil || len(found) != 1 {
		t.Fatalf("find operator client: %d %s", code, b)
	}
	code, b = keycloakAdmin(t, st, mt, http.MethodGet, "/"+realm+"/clients/"+found[0].ID+"/service-account-user", nil)
	var user struct{ ID string }
	if code != http.StatusOK || json.Unmarshal(b, &user) != nil {
		t.Fatalf("service account user: %d %s", code, b)
	}
	code, b = keycloakAdmin(t, st, mt, http.MethodGet, "/"+realm+"/roles/"+s.cfg.AdminRole, nil)
	var role map[string]any
	if code != http.StatusOK || json.Unmarshal(b, &role) != nil {
		t.Fatalf("role: %d %s", code, b)
	}
	if code, b := keycloakAdmin(t, st, mt, http.MethodPost, "/"+realm+"/users/"+user.ID+"/role-mappings/realm", []any{role}); code != http.StatusNoContent {
		t.Fatalf("grant role: %d %s", code, b)
	}
	admin = tokenOf("operator", opSecret)
	if !contains(realmRoles(claims(t, admin)), s.cfg.AdminRole) {
		t.Fatalf("the other realm's operator token lacks %s", s.cfg.AdminRole)
	}
	return device, admin
}

// shortLivedToken gets a real token of the device whose lifetime Keycloak
// sets to two seconds (the client's access.token.lifespan).
func shortLivedToken(t *testing.T, s *server, clientID, secret string) string {
	t.Helper()
	st := s.st
	at := token(t, st, st.AdminClientID, st.AdminClientSecret)
	found := keycloakClients(t, st, clientID)
	if len(found) != 1 {
		t.Fatalf("client %s: %d found", clientID, len(found))
	}
	rep := found[0]
	attrs, _ := rep["attributes"].(map[string]any)
	if attrs == nil {
		attrs = map[string]any{}
	}
	attrs["access.token.lifespan"] = "2"
	rep["attributes"] = attrs
	if resp, b := adminCall(t, st, at, http.MethodPut, "/clients/"+rep["id"].(string), rep); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("set token lifespan: %s %s", resp.Status, b)
	}
	tok := s.token(clientID, secret)
	c := claims(t, tok)
	exp, _ := c["exp"].(float64)
	iat, _ := c["iat"].(float64)
	if exp-iat > 5 {
		t.Fatalf("the short-lived token lives %v s", exp-iat)
	}
	return tok
}

// corpus is every file of the format packages' test data and fuzz corpora.
func corpus(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, dir := range []string{"../esp32image/testdata", "../nvs/testdata"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if raw, ok := fuzzCorpusBytes(b); ok {
				b = raw
			}
			out[strings.TrimPrefix(path, "../")] = b
			return nil
		})
		if err != nil {
			t.Fatalf("walk %s: %v", dir, err)
		}
	}
	if len(out) < 10 {
		t.Fatalf("only %d corpus files", len(out))
	}
	return out
}

// fuzzCorpusBytes extracts the []byte of a "go test fuzz v1" corpus file.
func fuzzCorpusBytes(b []byte) ([]byte, bool) {
	head, rest, ok := bytes.Cut(b, []byte("\n"))
	if !ok || string(head) != "go test fuzz v1" {
		return nil, false
	}
	line := strings.TrimSpace(strings.SplitN(string(rest), "\n", 2)[0])
	q, ok := strings.CutPrefix(line, "[]byte(")
	if !ok {
		return nil, false
	}
	var s string
	if _, err := fmt.Sscanf(strings.TrimSuffix(q, ")"), "%q", &s); err != nil {
		return nil, false
	}
	return []byte(s), true
}

func TestE2EHostileInput(t *testing.T) {
	s := startServer(t, map[string]string{
		"UNAUTH_RATE_LIMIT":     "0", // hundreds of refusals from one address
		"DEVICE_RATE_LIMIT":     "0",
		"ROTATION_TICK_SECONDS": "1",
	})
	m := newModel(t, s, map[string]any{"type": "object", "properties": map[string]any{"interval": map[string]any{"type": "integer"}}})
	devs := newSimDevices(t, s, m.ID, follows, follows, follows)
	a, b, short := devs[0], devs[1], devs[2]
	aTok, bTok := a.deviceToken(t, s), b.deviceToken(t, s)
	// A token that expires in 2 s; it is used last, after the 30 s of
	// leeway espmdm allows.
	expiring := shortLivedToken(t, s, short.ClientID, short.current)
	expiringAt := time.Now().Add(2 * time.Second)
	otherDevice, otherAdmin := otherRealmTokens(t, s, a.ClientID)
	dev := fmt.Sprintf("/api/devices/%d", a.ID)
	mod := fmt.Sprintf("/api/device-models/%d", m.ID)
	tried, created := 0, 0
	statuses := map[int]int{}
	run := func(cases []hostileCase) {
		t.Helper()
		for _, c := range cases {
			if c.method == "" {
				c.method = http.MethodGet
			}
			st := s.check(t, c)
			statuses[st]++
			if c.want == mayAccept {
				t.Logf("%s: %d", c.name, st)
			}
			if st == http.StatusCreated && c.path == "/api/devices" {
				created++
			}
			tried++
		}
	}

	t.Run("tokens", func(t *testing.T) {
		var cases []hostileCase
		for name, forged := range forgeries(t, s.st, aTok) {
			for _, path := range []string{"/iot/config", "/iot/provisioning"} {
				cases = append(cases, hostileCase{name: name + " on " + path, path: path, token: forged, want: http.StatusUnauthorized})
			}
		}
		for name, forged := range forgeries(t, s.st, s.admin) {
			cases = append(cases, hostileCase{name: "admin " + name, path: "/api/devices", token: forged, want: http.StatusUnauthorized})
			cases = append(cases, hostileCase{name: "admin " + name + " (write)", method: http.MethodPost, path: "/api/rotation/trigger", token: forged, want: http.StatusUnauthorized})
		}
		cases = append(cases,
			hostileCase{name: "device token on the admin API", path: "/api/devices", token: aTok, want: http.StatusUnauthorized},
			hostileCase{name: "device token on provisioning data", path: dev + "/provisioning", token: aTok, want: http.StatusUnauthorized},
			hostileCase{name: "device token creating a device", method: http.MethodPost, path: "/api/devices", token: aTok,
				body: []byte(fmt.Sprintf(`{"device_model_id":%d,"config":{}}`, m.ID)), headers: []string{"Content-Type", "application/json"}, want: http.StatusUnauthorized},
			hostileCase{name: "admin token on the device API", path: "/iot/config", token: s.admin, want: http.StatusUnauthorized},
			hostileCase{name: "admin token fetching credentials", path: "/iot/provisioning", token: s.admin, want: http.StatusUnauthorized},
			hostileCase{name: "viewer token writing", method: http.MethodDelete, path: dev, token: s.viewer, want: http.StatusForbidden},
			hostileCase{name: "viewer token on provisioning data", path: dev + "/provisioning", token: s.viewer, want: http.StatusForbidden},
			hostileCase{name: "other realm's token of the same device client id", path: "/iot/config", token: otherDevice, want: http.StatusUnauthorized},
			hostileCase{name: "other realm's admin-role token", path: "/api/devices", token: otherAdmin, want: http.StatusUnauthorized},
			hostileCase{name: "other realm's admin-role token writing", method: http.MethodDelete, path: dev, token: otherAdmin, want: http.StatusUnauthorized},
			hostileCase{name: "no token", path: "/iot/config", want: http.StatusUnauthorized},
			hostileCase{name: "Basic credentials", path: "/api/devices", headers: []string{"Authorization", "Basic YWRtaW46YWRtaW4="}, want: http.StatusUnauthorized},
			hostileCase{name: "Bearer without a token", path: "/api/devices", headers: []string{"Authorization", "Bearer "}, want: http.StatusUnauthorized},
			hostileCase{name: "two tokens", path: "/iot/config", headers: []string{"Authorization", "Bearer " + aTok + " " + bTok}, want: http.StatusUnauthorized},
			hostileCase{name: "token with a NUL", path: "/iot/config", headers: []string{"Authorization", "Bearer abc\x00def"}, raw: true},
			hostileCase{name: "token with a newline", path: "/iot/config", headers: []string{"Authorization", "Bearer abc\n\tdef"}, raw: true},
			hostileCase{name: "64 KiB Authorization header", path: "/api/devices", headers: []string{"Authorization", "Bearer " + strings.Repeat("A", 64<<10)}},
			hostileCase{name: "headers over the 16 KiB buffer", path: "/iot/config", token: aTok, headers: manyHeaders(200, 100)},
		)
		run(cases)
		// Every refusal left the device's state alone.
		s.do(http.MethodGet, "/iot/config", aTok, nil).want(t, http.StatusOK, nil)
	})

	t.Run("another device's rotation ack", func(t *testing.T) {
		s.do(http.MethodPost, fmt.Sprintf("/api/devices/%d/rotate", b.ID), s.admin, nil).want(t, http.StatusAccepted, nil)
		deadline := time.Now().Add(30 * time.Second)
		for deviceState(t, s, b.ID).RotationState != "PENDING" {
			if time.Now().After(deadline) {
				t.Fatalf("device B never became PENDING")
			}
			time.Sleep(100 * time.Millisecond)
		}
		var p provisioningDTO
		s.do(http.MethodGet, "/iot/provisioning", bTok, nil).want(t, http.StatusOK, &p)
		s.keep(p.ClientSecret)
		ack := func(secret string) []byte { return []byte(`{"client_secret_sha256":"` + sha256Hex(secret) + `"}`) }
		jsonCT := []string{"Content-Type", "application/json"}
		run([]hostileCase{
			{name: "A acks B's new secret", method: http.MethodPost, path: "/iot/provisioning/ack", token: aTok, body: ack(p.ClientSecret), headers: jsonCT, want: http.StatusConflict},
			{name: "A acks its own current secret", method: http.MethodPost, path: "/iot/provisioning/ack", token: aTok, body: ack(a.current), headers: jsonCT, want: http.StatusConflict},
			{name: "B acks a wrong hash", method: http.MethodPost, path: "/iot/provisioning/ack", token: bTok, body: ack("guess"), headers: jsonCT, want: http.StatusConflict},
			{name: "B acks a malformed hash", method: http.MethodPost, path: "/iot/provisioning/ack", token: bTok, body: []byte(`{"client_secret_sha256":"zz"}`), headers: jsonCT},
			{name: "B acks a number", method: http.MethodPost, path: "/iot/provisioning/ack", token: bTok, body: []byte(`{"client_secret_sha256":5}`), headers: jsonCT, want: http.StatusBadRequest},
			{name: "B acks nothing", method: http.MethodPost, path: "/iot/provisioning/ack", token: bTok, body: []byte(`{}`), headers: jsonCT, want: http.StatusBadRequest},
			{name: "B acks with an admin token", method: http.MethodPost, path: "/iot/provisioning/ack", token: s.admin, body: ack(p.ClientSecret), headers: jsonCT, want: http.StatusUnauthorized},
		})
		if st := deviceState(t, s, b.ID).RotationState; st != "PENDING" {
			t.Fatalf("B's rotation is %s after the foreign acks, want still PENDING", st)
		}
		newTok := s.token(b.ClientID, p.ClientSecret)
		s.do(http.MethodPost, "/iot/provisioning/ack", newTok, map[string]string{"client_secret_sha256": sha256Hex(p.ClientSecret)}).
			want(t, http.StatusNoContent, nil)
		if st := deviceState(t, s, b.ID).RotationState; st != "OK" {
			t.Errorf("B's own ack left it %s", st)
		}
	})

	t.Run("ids, paths and queries", func(t *testing.T) {
		var cases []hostileCase
		for _, id := range []string{"0", "-1", "abc", "1e3", "0x10", "1.5", "99999999999999999999", "%20", "1;drop", "%00", "1%00", "%2e%2e", "1%2F2", "%E2%80%AE1", strings.Repeat("9", 4000)} {
			cases = append(cases,
				hostileCase{name: "device id " + id, path: "/api/devices/" + id, token: s.viewer},
				hostileCase{name: "model id " + id, path: "/api/device-models/" + id + "/firmware", token: s.viewer},
				hostileCase{name: "delete device id " + id, method: http.MethodDelete, path: "/api/devices/" + id, token: s.admin},
			)
		}
		cases = append(cases,
			hostileCase{name: "unknown device", path: "/api/devices/987654321", token: s.viewer, want: http.StatusNotFound},
			hostileCase{name: "unknown model firmware", path: "/api/device-models/987654321/firmware", token: s.viewer, want: http.StatusNotFound},
			// A trick path matches no route, or the route it names with
			// that route's authentication: never a way around it.
			hostileCase{name: "dot segments to the admin API", path: "/health/../api/devices"},
			hostileCase{name: "encoded dot segments to the admin API", path: "/health/%2e%2e/api/devices"},
			hostileCase{name: "device API to admin API by dots", path: "/iot/../api/devices", token: aTok},
			hostileCase{name: "device token up from a device route", path: "/iot/config/../../api/devices/1/provisioning", token: aTok},
			hostileCase{name: "double slash", path: "//api//devices"},
			hostileCase{name: "raw dot segments", path: "/iot/../api/devices", raw: true},
			hostileCase{name: "trailing slash", path: "/api/devices/", token: s.viewer, want: http.StatusNotFound},
			hostileCase{name: "upper case", path: "/API/DEVICES", token: s.viewer, want: http.StatusNotFound},
			hostileCase{name: "backslash", path: "/api\\devices", token: s.viewer},
			hostileCase{name: "8 KiB path", path: "/api/devices/" + strings.Repeat("a", 8<<10), token: s.viewer},
			hostileCase{name: "absolute URI request target", path: "http://evil.example.com/api/devices", raw: true, want: http.StatusUnauthorized},
			hostileCase{name: "unknown method", method: "PATCH", path: dev, token: s.admin},
			hostileCase{name: "TRACE", method: "TRACE", path: dev, token: s.admin},
			hostileCase{name: "unknown route", path: "/api/secrets", token: s.admin, want: http.StatusNotFound},
		)
		for _, q := range []string{"limit=0", "limit=-1", "limit=1000001", "limit=abc", "limit=1.5", "cursor=garbage", "cursor=c1.!!!",
			"cursor=c1." + base64.RawURLEncoding.EncodeToString([]byte("-5")), "cursor=" + strings.Repeat("c", 4000), "model_id=x", "model_id=-3",
			"rotation_state=BOGUS", "rotation_state=ok%00", "active=maybe"} {
			cases = append(cases, hostileCase{name: "list ?" + q, path: "/api/devices?" + q, token: s.viewer, want: http.StatusBadRequest})
		}
		for _, q := range []string{"size=-1", "size=0x", "size=0x2fff", "size=0x100001", "size=99999999999999999999999", "size=1e6", "format=../../etc/passwd", "format=JSON"} {
			cases = append(cases, hostileCase{name: "provisioning ?" + q, path: dev + "/provisioning?" + q, token: s.admin, want: http.StatusBadRequest})
		}
		for _, q := range []string{"group=bogus", "limit=x", "cursor=zzz"} {
			cases = append(cases, hostileCase{name: "dashboard ?" + q, path: "/api/rotation/dashboard?" + q, token: s.viewer, want: http.StatusBadRequest})
		}
		run(cases)
	})

	t.Run("bodies", func(t *testing.T) {
		js := []string{"Content-Type", "application/json"}
		post := func(name, path string, body string, want int) hostileCase {
			return hostileCase{name: name, method: http.MethodPost, path: path, token: s.admin, body: []byte(body), headers: js, want: want}
		}
		put := func(name, path string, body string, want int) hostileCase {
			c := post(name, path, body, want)
			c.method = http.MethodPut
			return c
		}
		mid := fmt.Sprint(m.ID)
		var cases []hostileCase
		for name, body := range map[string]string{
			"empty":                  "",
			"truncated":              `{"device_model_id":` + mid,
			"array":                  `[]`,
			"null":                   `null`,
			"string":                 `"device"`,
			"number":                 `42`,
			"id as a string":         `{"device_model_id":"` + mid + `","config":{}}`,
			"id fractional":          `{"device_model_id":1.5,"config":{}}`,
			"id negative":            `{"device_model_id":-1,"config":{}}`,
			"id overflowing":         `{"device_model_id":99999999999999999999,"config":{}}`,
			"config an array":        `{"device_model_id":` + mid + `,"config":[]}`,
			"config a string":        `{"device_model_id":` + mid + `,"config":"x"}`,
			"config null":            `{"device_model_id":` + mid + `,"config":null}`,
			"config missing":         `{"device_model_id":` + mid + `}`,
			"config off the schema":  `{"device_model_id":` + mid + `,"config":{"interval":"often"}}`,
			"unknown member":         `{"device_model_id":` + mid + `,"config":{},"admin":true}`,
			"active a string":        `{"device_model_id":` + mid + `,"config":{},"active":"yes"}`,
			"trailing data":          `{"device_model_id":` + mid + `,"config":{}}{}`,
			"deep nesting":           `{"device_model_id":` + mid + `,"config":{"a":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}}`,
			"invalid UTF-8":          "{\"device_model_id\":" + mid + ",\"config\":{\"k\":\"\xff\xfe\"}}",
			"lone surrogate":         `{"device_model_id":` + mid + `,"config":{"k":"\ud800"}}`,
			"NUL escape":             `{"device_model_id":` + mid + `,"config":{"k":"a\u0000b"}}`,
			"duplicate members":      `{"device_model_id":1,"device_model_id":` + mid + `,"config":{},"config":[]}`,
			"unknown model":          `{"device_model_id":987654321,"config":{}}`,
			"comment":                `{/* hi */"device_model_id":` + mid + `,"config":{}}`,
			"single quotes":          `{'device_model_id':` + mid + `,'config':{}}`,
			"BOM":                    "\ufeff{\"device_model_id\":" + mid + ",\"config\":{}}",
			"key case (Config)":      `{"device_model_id":` + mid + `,"Config":{}}`,
			"over the 1 MiB limit":   `{"device_model_id":` + mid + `,"config":{"pad":"` + strings.Repeat("x", 1<<20) + `"}}`,
			"key id member smuggled": `{"device_model_id":` + mid + `,"config":{},"key":"aaaaaaaa"}`,
		} {
			c := post("create device: "+name, "/api/devices", body, 0)
			switch name {
			case "over the 1 MiB limit":
				c.want = http.StatusRequestEntityTooLarge
			case "lone surrogate", "NUL escape":
				c.want = mayAccept // valid JSON; stored or refused, never a 500
			}
			cases = append(cases, c)
		}
		for name, body := range map[string]string{
			"code with a space":    `{"code":"a b","name":"x"}`,
			"code with dots":       `{"code":"../x","name":"x"}`,
			"code upper case":      `{"code":"ABC","name":"x"}`,
			"code too long":        `{"code":"` + strings.Repeat("a", 51) + `","name":"x"}`,
			"code a number":        `{"code":5,"name":"x"}`,
			"name empty":           `{"code":"h_` + randHex(3) + `","name":""}`,
			"name too long":        `{"code":"h_` + randHex(3) + `","name":"` + strings.Repeat("n", 256) + `"}`,
			"schema a string":      `{"code":"h_` + randHex(3) + `","name":"x","config_schema":"object"}`,
			"schema invalid":       `{"code":"h_` + randHex(3) + `","name":"x","config_schema":{"type":"nonsense"}}`,
			"schema external $ref": `{"code":"h_` + randHex(3) + `","name":"x","config_schema":{"$ref":"http://169.254.169.254/latest/meta-data"}}`,
			"schema file $ref":     `{"code":"h_` + randHex(3) + `","name":"x","config_schema":{"$ref":"file:///etc/passwd"}}`,
			"schema bad regex":     `{"code":"h_` + randHex(3) + `","name":"x","config_schema":{"type":"string","pattern":"(("}}`,
			"schema not UTF-8":     "{\"code\":\"h_" + randHex(3) + "\",\"name\":\"x\",\"config_schema\":{\"title\":\"\xc3\x28\"}}",
			"name not UTF-8":       "{\"code\":\"h_" + randHex(3) + "\",\"name\":\"\xc3\x28\"}",
			"taken code":           `{"code":"` + m.Code + `","name":"x"}`,
		} {
			cases = append(cases, post("create model: "+name, "/api/device-models", body, 0))
		}
		cases = append(cases,
			put("change a model's code", mod, `{"code":"other","name":"x"}`, http.StatusBadRequest),
			put("update model: name a number", mod, `{"name":7}`, http.StatusBadRequest),
			put("update device: config off the schema", dev, `{"config":{"interval":"often"},"active":true}`, http.StatusConflict),
			put("update device: active null", dev, `{"config":{},"active":null}`, 0),
			put("update device: move to another model", dev, `{"config":{},"active":true,"device_model_id":1}`, http.StatusBadRequest),
			hostileCase{name: "create device as text/plain", method: http.MethodPost, path: "/api/devices", token: s.admin,
				body: []byte(`{"device_model_id":` + mid + `,"config":{}}`), headers: []string{"Content-Type", "text/plain"}, want: http.StatusUnsupportedMediaType},
			hostileCase{name: "create device gzip-encoded", method: http.MethodPost, path: "/api/devices", token: s.admin,
				body: []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}, headers: []string{"Content-Type", "application/json", "Content-Encoding", "gzip"}, want: http.StatusUnsupportedMediaType},
			hostileCase{name: "create device with a bad media type", method: http.MethodPost, path: "/api/devices", token: s.admin,
				body: []byte(`{}`), headers: []string{"Content-Type", "application/json; charset"}, want: http.StatusUnsupportedMediaType},
			hostileCase{name: "ack over the /iot body limit", method: http.MethodPost, path: "/iot/provisioning/ack", token: aTok,
				body: bytes.Repeat([]byte(" "), 8<<10), headers: js, want: http.StatusRequestEntityTooLarge},
			hostileCase{name: "body on a GET over the limit", path: "/api/devices", token: s.viewer, body: bytes.Repeat([]byte("x"), 64<<10), want: http.StatusRequestEntityTooLarge},
			hostileCase{name: "upload as JSON", method: http.MethodPost, path: mod + "/firmware", token: s.admin, body: []byte(`{}`), headers: js, want: http.StatusUnsupportedMediaType},
			hostileCase{name: "multipart without a boundary", method: http.MethodPost, path: mod + "/firmware", token: s.admin, body: []byte("x"),
				headers: []string{"Content-Type", "multipart/form-data"}, want: http.StatusBadRequest},
			hostileCase{name: "multipart garbage", method: http.MethodPost, path: mod + "/firmware", token: s.admin, body: []byte("--b\r\nnothing"),
				headers: []string{"Content-Type", "multipart/form-data; boundary=b"}, want: http.StatusBadRequest},
			hostileCase{name: "upload over FIRMWARE_MAX_BYTES", method: http.MethodPost, path: mod + "/firmware", token: s.admin,
				body: make([]byte, s.cfg.FirmwareMaxBytes+1), headers: []string{"Content-Type", "application/octet-stream"}, want: http.StatusRequestEntityTooLarge},
		)
		run(cases)
	})

	t.Run("firmware corpora through the upload endpoint", func(t *testing.T) {
		up := mod + "/firmware"
		oct := []string{"Content-Type", "application/octet-stream"}
		good := firmwareImage(esp32image.ChipESP32, "9.9.9")
		s.request(http.MethodPost, up, s.admin, bytes.NewReader(good), oct...).want(t, http.StatusCreated, nil)
		// A Range past the end is ignored: the whole file.
		for _, c := range []struct{ path, token string }{{"/iot/firmware", aTok}, {up, s.viewer}} {
			r := s.request(http.MethodGet, c.path, c.token, nil, "Range", "bytes=99999999-").want(t, http.StatusOK, nil)
			if !bytes.Equal(r.body, good) || r.header.Get("Content-Range") != "" {
				t.Errorf("%s with a Range past the end: %d bytes, Content-Range %q; want the whole file", c.path, len(r.body), r.header.Get("Content-Range"))
			}
		}
		accepted := 0
		files := corpus(t)
		for name, version := range map[string]string{
			"version not UTF-8": "1.0\xff", "version with a newline": "1.0\n{\"level\":\"error\"}", "version with an escape": "\x1b[31m1.0",
		} {
			files["valid image, "+name] = firmwareImage(esp32image.ChipESP32, version)
		}
		for i := 0; i < len(good); i += len(good) / 16 {
			files[fmt.Sprintf("valid image truncated to %d", i)] = good[:i]
			flipped := bytes.Clone(good)
			flipped[i] ^= 0x40
			files[fmt.Sprintf("valid image, bit flipped at %d", i)] = flipped
		}
		for name, data := range files {
			for _, multipart := range []bool{false, true} {
				body, headers := data, oct
				if multipart {
					r, ct := multipartBody(t, data)
					body, _ = io.ReadAll(r)
					headers = []string{"Content-Type", ct}
				}
				req, _ := http.NewRequest(http.MethodPost, s.base+up, bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+s.admin)
				req.Header.Set(headers[0], headers[1])
				resp, err := s.client.Do(req)
				if err != nil {
					t.Errorf("%s: no answer: %v", name, err)
					continue
				}
				rb, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				tried++
				statuses[resp.StatusCode]++
				if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK {
					accepted++ // a valid image (200: the current one again): the corpora hold some
					continue
				}
				// 400 for a broken image; 409 for a valid one whose
				// secure_version is below the current firmware's.
				wantRefusal(t, hostileCase{name: name}, resp.StatusCode, resp.Header.Get("Content-Type"), rb)
			}
		}
		t.Logf("%d corpus inputs uploaded (raw and multipart): %d accepted as valid images, the rest refused with a 4xx", 2*len(files), accepted)
	})

	t.Run("an expired real token", func(t *testing.T) {
		// Past its exp and the 30 s leeway.
		time.Sleep(time.Until(expiringAt.Add(31 * time.Second)))
		run([]hostileCase{
			{name: "expired Keycloak token on /iot/config", path: "/iot/config", token: expiring, want: http.StatusUnauthorized},
			{name: "expired Keycloak token on /iot/provisioning", path: "/iot/provisioning", token: expiring, want: http.StatusUnauthorized},
		})
	})

	// Still serving, and nothing was left behind.
	s.do(http.MethodGet, "/health/ready", "", nil).want(t, http.StatusOK, nil)
	var list struct {
		Devices []deviceDTO `json:"devices"`
	}
	s.do(http.MethodGet, fmt.Sprintf("/api/devices?model_id=%d", m.ID), s.viewer, nil).want(t, http.StatusOK, &list)
	if len(list.Devices) != 3+created {
		t.Errorf("%d devices of the model after the hostile requests, want the 3 created and the %d odd but valid ones", len(list.Devices), created)
	}
	t.Logf("%d hostile requests tried; answers by status: %v", tried, statuses)
}

// manyHeaders is n headers of size bytes each.
func manyHeaders(n, size int) []string {
	var h []string
	for i := range n {
		h = append(h, fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", size))
	}
	return h
}
