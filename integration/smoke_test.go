package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/espmdm/espmdm/integration"
)

// TestMain runs the tests on the shared stack (with its S3 server, for the
// blob store's tests) and then fails the run when a test left a goroutine
// behind.
func TestMain(m *testing.M) {
	os.Exit(integration.VerifyNoLeaks(integration.RunTestsWith(m, integration.Options{S3: true})))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func TestPostgresQuery(t *testing.T) {
	st := integration.Shared(t)
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(st.NewDatabase(t))))
	defer db.Close()
	ctx := ctxT(t, 30*time.Second)
	if _, err := db.ExecContext(ctx, `CREATE TABLE smoke (n int)`); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO smoke VALUES (20), (22)`); err != nil {
		t.Fatalf("insert: %v", err)
	}
	var sum int
	if err := db.QueryRowContext(ctx, `SELECT sum(n) FROM smoke`).Scan(&sum); err != nil {
		t.Fatalf("select: %v", err)
	}
	if sum != 42 {
		t.Errorf("sum = %d, want 42", sum)
	}
}

// mqttConnect opens an MQTT v5 session to the stack's broker.
func mqttConnect(t *testing.T, ctx context.Context, brokerURL, clientID string, onMsg func(paho.PublishReceived) (bool, error)) *paho.Client {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		t.Fatalf("dial broker: %v", err)
	}
	cfg := paho.ClientConfig{ClientID: clientID, Conn: conn}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){onMsg}
	}
	c := paho.NewClient(cfg)
	cp := &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30}
	if u.User != nil { // the broker lets in only those with an account
		pw, _ := u.User.Password()
		cp.Username, cp.UsernameFlag = u.User.Username(), true
		cp.Password, cp.PasswordFlag = []byte(pw), true
	}
	ack, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if ack.ReasonCode != 0 {
		t.Fatalf("connack reason %d", ack.ReasonCode)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return c
}

func TestMQTTv5RoundTrip(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 30*time.Second)
	// Only espmdm's account may publish, and only on iotsupport/# (SPEC §19).
	topic := "iotsupport/smoke-" + randHex(4) + "/config"
	got := make(chan *paho.Publish, 1)
	sub := mqttConnect(t, ctx, st.MQTTAdminURL(), "sub-"+randHex(4), func(pr paho.PublishReceived) (bool, error) {
		got <- pr.Packet
		return true, nil
	})
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	pub := mqttConnect(t, ctx, st.MQTTAdminURL(), "pub-"+randHex(4), nil)
	payload := []byte(`{"firmware_version":"1.2.3"}`)
	if _, err := pub.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload,
		Properties: &paho.PublishProperties{ContentType: "application/json"}}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	select {
	case p := <-got:
		if !bytes.Equal(p.Payload, payload) || p.Topic != topic {
			t.Errorf("got %q on %q, want %q on %q", p.Payload, p.Topic, payload, topic)
		}
		if p.Properties == nil || p.Properties.ContentType != "application/json" {
			t.Errorf("v5 content type property lost: %+v", p.Properties)
		}
	case <-ctx.Done():
		t.Fatal("message not delivered")
	}
}

// token gets an access token with the client-credentials grant.
func token(t *testing.T, st *integration.Stack, clientID, secret string) string {
	t.Helper()
	tok, code := tokenStatus(t, st, clientID, secret)
	if code != http.StatusOK || tok == "" {
		t.Fatalf("token for %s: status %d", clientID, code)
	}
	return tok
}

// claims decodes a JWT's payload without verifying it (the stack's own
// tokens, for inspection only).
func claims(t *testing.T, jwt string) map[string]any {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("payload: %v", err)
	}
	var c map[string]any
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("payload: %v", err)
	}
	return c
}

func realmRoles(c map[string]any) []string {
	ra, _ := c["realm_access"].(map[string]any)
	list, _ := ra["roles"].([]any)
	var roles []string
	for _, r := range list {
		if s, ok := r.(string); ok {
			roles = append(roles, s)
		}
	}
	return roles
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func adminCall(t *testing.T, st *integration.Stack, tok, method, path string, body any) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, st.KeycloakURL+"/admin/realms/"+st.Realm+path, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestAdminServiceAccountManagesClients(t *testing.T) {
	st := integration.Shared(t)
	tok := token(t, st, st.AdminClientID, st.AdminClientSecret)
	clientID := "iotdevice-smoke-" + randHex(4)

	resp, body := adminCall(t, st, tok, http.MethodPost, "/clients", map[string]any{
		"clientId": clientID, "enabled": true, "protocol": "openid-connect", "publicClient": false,
		"clientAuthenticatorType": "client-secret", "serviceAccountsEnabled": true,
		"standardFlowEnabled": false, "directAccessGrantsEnabled": false, "implicitFlowEnabled": false,
	})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create client: %s %s", resp.Status, body)
	}
	loc := resp.Header.Get("Location")
	uuid := loc[strings.LastIndex(loc, "/")+1:]

	resp, body = adminCall(t, st, tok, http.MethodGet, "/clients?clientId="+clientID, nil)
	var found []struct {
		ID                     string `json:"id"`
		ClientID               string `json:"clientId"`
		ServiceAccountsEnabled bool   `json:"serviceAccountsEnabled"`
		PublicClient           bool   `json:"publicClient"`
	}
	if err := json.Unmarshal(body, &found); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("read client: %s %s %v", resp.Status, body, err)
	}
	if len(found) != 1 || found[0].ID != uuid || !found[0].ServiceAccountsEnabled || found[0].PublicClient {
		t.Fatalf("read client = %+v, want one confidential service-account client %s", found, uuid)
	}

	resp, body = adminCall(t, st, tok, http.MethodGet, "/clients/"+uuid+"/client-secret", nil)
	var secret struct{ Value string }
	if err := json.Unmarshal(body, &secret); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("client secret: %s %v", resp.Status, err)
	}
	// The new client's own credentials work.
	_ = token(t, st, clientID, secret.Value)

	if resp, body = adminCall(t, st, tok, http.MethodDelete, "/clients/"+uuid, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete client: %s %s", resp.Status, body)
	}
	_, body = adminCall(t, st, tok, http.MethodGet, "/clients?clientId="+clientID, nil)
	if strings.TrimSpace(string(body)) != "[]" {
		t.Fatalf("client still listed after delete: %s", body)
	}
}

func TestOperatorTokenCarriesAdminRole(t *testing.T) {
	st := integration.Shared(t)
	c := claims(t, token(t, st, st.OperatorClientID, st.OperatorClientSecret))
	if got := c["iss"]; got != st.IssuerURL {
		t.Errorf("iss = %v, want %s", got, st.IssuerURL)
	}
	if got := c["azp"]; got != st.OperatorClientID {
		t.Errorf("azp = %v, want %s", got, st.OperatorClientID)
	}
	if roles := realmRoles(c); !contains(roles, "mdm-admin") {
		t.Errorf("operator realm roles = %v, want mdm-admin among them", roles)
	}
	viewer := claims(t, token(t, st, st.ViewerClientID, st.ViewerClientSecret))
	if roles := realmRoles(viewer); !contains(roles, "mdm-viewer") || contains(roles, "mdm-admin") {
		t.Errorf("viewer realm roles = %v, want mdm-viewer and not mdm-admin", roles)
	}
}

func TestWrongSecretIsRefused(t *testing.T) {
	st := integration.Shared(t)
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {st.OperatorClientID}, "client_secret": {"wrong"}}
	resp, err := http.PostForm(st.TokenURL, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("token with a wrong secret: %s, want 401", resp.Status)
	}
}

func TestStopAndStartService(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 3*time.Minute)
	dsn := st.NewDatabase(t)
	ping := func() error {
		db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn), pgdriver.WithTimeout(2*time.Second)))
		defer db.Close()
		return db.PingContext(ctx)
	}
	if err := ping(); err != nil {
		t.Fatalf("postgres before stop: %v", err)
	}
	if err := st.StopService(ctx, integration.Mosquitto); err != nil {
		t.Fatalf("stop mosquitto: %v", err)
	}
	if _, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", strings.TrimPrefix(st.MQTTURL, "mqtt://")); err == nil {
		t.Error("mosquitto still accepts connections after StopService")
	}
	if err := st.StartService(ctx, integration.Mosquitto); err != nil {
		t.Fatalf("start mosquitto: %v", err)
	}
	c := mqttConnect(t, ctx, st.MQTTAdminURL(), "restart-"+randHex(4), nil)
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "iotsupport/smoke-restart/config", QoS: 1, Payload: []byte("x")}); err != nil {
		t.Errorf("publish after restart: %v", err)
	}
	// The database survives a restart of PostgreSQL on the same port.
	if err := st.StopService(ctx, integration.Postgres); err != nil {
		t.Fatalf("stop postgres: %v", err)
	}
	if err := ping(); err == nil {
		t.Error("postgres still answers after StopService")
	}
	if err := st.StartService(ctx, integration.Postgres); err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	if err := ping(); err != nil {
		t.Fatalf("postgres after restart: %v", err)
	}
}
