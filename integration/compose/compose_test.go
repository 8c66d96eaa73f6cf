//go:build containers

// Package compose_test runs the repository's compose.yaml on a Docker
// engine (make test-containers): the whole deployment comes up healthy, a
// device is created and fetches its config, two espmdm replicas on one
// database rotate a device with one lease holder, and down leaves nothing.
//
// Images: $ESPMDM_IMAGE (espmdm, built by make image), and
// $ESPMDM_POSTGRES_IMAGE, $ESPMDM_KEYCLOAK_IMAGE, $ESPMDM_MOSQUITTO_IMAGE
// (as for the containers launcher; empty: the official images).
package compose_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// project is one compose project of compose.yaml.
type project struct {
	t       *testing.T
	name    string
	envFile string
	cmd     []string // docker compose or docker-compose
	env     map[string]string
}

// composeCommand is `docker compose` when the plugin is there, else
// Debian's docker-compose.
func composeCommand(t *testing.T) []string {
	t.Helper()
	if c := os.Getenv("COMPOSE"); c != "" {
		return strings.Fields(c)
	}
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}
	}
	t.Fatal("neither `docker compose` nor docker-compose is installed")
	return nil
}

func (p *project) run(timeout time.Duration, args ...string) (string, error) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append(append([]string{}, p.cmd[1:]...), "-p", p.name, "--env-file", p.envFile, "-f", "../../compose.yaml", "--profile", "replicas")
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, p.cmd[0], full...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (p *project) must(timeout time.Duration, args ...string) string {
	p.t.Helper()
	out, err := p.run(timeout, args...)
	if err != nil {
		p.t.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// leftovers lists what the engine still has of the project.
func (p *project) leftovers() []string {
	p.t.Helper()
	var left []string
	for _, what := range [][]string{
		{"ps", "-aq"}, {"network", "ls", "-q"}, {"volume", "ls", "-q"},
	} {
		args := append(append([]string{}, what...), "--filter", "label=com.docker.compose.project="+p.name)
		out, err := exec.Command("docker", args...).CombinedOutput()
		if err != nil {
			p.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, id := range strings.Fields(string(out)) {
			left = append(left, what[0]+" "+id)
		}
	}
	return left
}

func newProject(t *testing.T) *project {
	t.Helper()
	p := &project{t: t, name: "espmdmtest" + randHex(4), cmd: composeCommand(t)}
	p.env = map[string]string{
		"POSTGRES_PASSWORD":             randHex(12),
		"SECRET_KEY":                    randHex(32),
		"ESPMDM_ADMIN_CLIENT_SECRET":    randHex(16),
		"ESPMDM_OPERATOR_CLIENT_SECRET": randHex(16),
		"ESPMDM_VIEWER_CLIENT_SECRET":   randHex(16),
		"ESPMDM_PIPELINE_CLIENT_SECRET": randHex(16),
		"KEYCLOAK_ADMIN_PASSWORD":       randHex(12),
		"MQTT_ADMIN_PASSWORD":           randHex(16),
		"ESPMDM_PORT":                   freePort(t),
		"ESPMDM_REPLICA_PORT":           freePort(t),
		"KEYCLOAK_PORT":                 freePort(t),
		"MQTT_PORT":                     freePort(t),
		"ROTATION_TICK_SECONDS":         "1",
		"ROTATION_CONCURRENCY":          "2",
	}
	for compose, ours := range map[string]string{
		"ESPMDM_IMAGE": "ESPMDM_IMAGE", "POSTGRES_IMAGE": "ESPMDM_POSTGRES_IMAGE",
		"KEYCLOAK_IMAGE": "ESPMDM_KEYCLOAK_IMAGE", "MOSQUITTO_IMAGE": "ESPMDM_MOSQUITTO_IMAGE",
	} {
		if v := os.Getenv(ours); v != "" {
			p.env[compose] = v
		}
	}
	var b strings.Builder
	for k, v := range p.env {
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	p.envFile = filepath.Join(t.TempDir(), "compose.env")
	if err := os.WriteFile(p.envFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := p.run(time.Minute, "logs", "--no-color", "--tail", "40")
			t.Logf("compose logs (last lines of each service):\n%s", out)
		}
		// Also when the test failed half way.
		if out, err := p.run(3*time.Minute, "down", "-v", "--remove-orphans", "--timeout", "20"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})
	return p
}

type client struct {
	t    *testing.T
	http *http.Client
}

type reply struct {
	status int
	body   []byte
}

func (c *client) do(method, u, tok string, in any) reply {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			c.t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return reply{status: 0, body: []byte(err.Error())}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, body: b}
}

func (r reply) want(t *testing.T, status int, out any) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			t.Fatalf("decode %s: %v", r.body, err)
		}
	}
}

// token is a client-credentials token from the published Keycloak port.
func (c *client) token(keycloak, clientID, secret string) (string, int) {
	c.t.Helper()
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {clientID}, "client_secret": {secret}}
	resp, err := c.http.PostForm(keycloak+"/realms/iot/protocol/openid-connect/token", form)
	if err != nil {
		c.t.Fatalf("token: %v", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	return tok.AccessToken, resp.StatusCode
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, last := ok()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s (last: %s)", what, timeout, last)
		}
		time.Sleep(time.Second)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

var leaseHeld = regexp.MustCompile(`(?m)^espmdm_rotation_lease_held\{holder="([^"]*)"\} 1$`)

func TestCompose(t *testing.T) {
	p := newProject(t)
	began := time.Now()
	p.must(10*time.Minute, "up", "-d", "--no-build")
	c := &client{t: t, http: &http.Client{Timeout: 30 * time.Second}}
	replicas := []string{"http://127.0.0.1:" + p.env["ESPMDM_PORT"], "http://127.0.0.1:" + p.env["ESPMDM_REPLICA_PORT"]}
	keycloak := "http://127.0.0.1:" + p.env["KEYCLOAK_PORT"]
	for _, base := range replicas {
		waitFor(t, 5*time.Minute, base+"/health/ready", func() (bool, string) {
			r := c.do(http.MethodGet, base+"/health/ready", "", nil)
			return r.status == http.StatusOK, fmt.Sprintf("%d %s", r.status, r.body)
		})
	}
	t.Logf("compose up: both replicas ready in %s", time.Since(began).Round(time.Second))
	// The image's HEALTHCHECK (espmdm healthcheck) agrees.
	waitFor(t, time.Minute, "espmdm container healthy", func() (bool, string) {
		id := strings.TrimSpace(p.must(time.Minute, "ps", "-q", "espmdm"))
		out, _ := exec.Command("docker", "inspect", "--format", "{{.State.Health.Status}}", id).CombinedOutput()
		return strings.TrimSpace(string(out)) == "healthy", string(out)
	})

	// The image embeds the built console.
	if r := c.do(http.MethodGet, replicas[0]+"/console/", "", nil); r.status != http.StatusOK || bytes.Contains(r.body, []byte("not built")) {
		t.Errorf("GET /console/: %d, built console expected: %.200s", r.status, r.body)
	}

	admin, code := c.token(keycloak, "espmdm-operator", p.env["ESPMDM_OPERATOR_CLIENT_SECRET"])
	if code != http.StatusOK {
		t.Fatalf("operator token: HTTP %d", code)
	}

	// A device is created on one replica and fetches its config from the
	// other.
	var model struct {
		ID int64 `json:"id"`
	}
	c.do(http.MethodPost, replicas[0]+"/api/device-models", admin, map[string]any{"code": "compose_" + randHex(3), "name": "Compose sensor"}).
		want(t, http.StatusCreated, &model)
	var dev struct {
		ID       int64  `json:"id"`
		ClientID string `json:"client_id"`
	}
	c.do(http.MethodPost, replicas[0]+"/api/devices", admin, map[string]any{"device_model_id": model.ID, "config": map[string]any{"interval_s": 60}}).
		want(t, http.StatusCreated, &dev)
	var prov struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
		TokenURL     string `json:"token_url"`
		MQTTURL      string `json:"mqtt_url"`
	}
	c.do(http.MethodGet, fmt.Sprintf("%s/api/devices/%d/provisioning?format=json", replicas[0], dev.ID), admin, nil).want(t, http.StatusOK, &prov)
	if prov.ClientID != dev.ClientID || prov.ClientSecret == "" || !strings.HasSuffix(prov.TokenURL, "/realms/iot/protocol/openid-connect/token") {
		t.Fatalf("provisioning = %+v", prov)
	}
	devTok, code := c.token(keycloak, dev.ClientID, prov.ClientSecret)
	if code != http.StatusOK {
		t.Fatalf("device token: HTTP %d", code)
	}
	var cfg map[string]any
	c.do(http.MethodGet, replicas[1]+"/iot/config", devTok, nil).want(t, http.StatusOK, &cfg)
	if !strings.Contains(fmt.Sprint(cfg), "interval_s") {
		t.Errorf("/iot/config = %v, want the device's config", cfg)
	}

	// Both replicas name the same lease holder, and exactly one of them
	// says in its metrics that it holds the lease.
	type status struct {
		Mode        string         `json:"mode"`
		Counts      map[string]int `json:"counts_by_state"`
		LeaseHolder *string        `json:"lease_holder"`
	}
	var holder string
	waitFor(t, time.Minute, "one lease holder", func() (bool, string) {
		var names []string
		held := 0
		for _, base := range replicas {
			var st status
			c.do(http.MethodGet, base+"/api/rotation/status", admin, nil).want(t, http.StatusOK, &st)
			if st.LeaseHolder == nil {
				return false, base + ": no lease holder"
			}
			names = append(names, *st.LeaseHolder)
			if st.Mode != "grace" {
				t.Fatalf("%s: rotation mode %q, want grace (the feature and policy are on)", base, st.Mode)
			}
			m := c.do(http.MethodGet, base+"/metrics", "", nil)
			held += len(leaseHeld.FindAll(m.body, -1))
		}
		holder = names[0]
		return names[0] == names[1] && held == 1, fmt.Sprintf("holders %q, %d replicas hold it", names, held)
	})
	ids := map[string]bool{}
	for _, svc := range []string{"espmdm", "espmdm-replica"} {
		id := strings.TrimSpace(p.must(time.Minute, "ps", "-q", svc))
		if len(id) < 12 {
			t.Fatalf("compose ps -q %s = %q", svc, id)
		}
		ids[id[:12]] = strings.Contains(holder, id[:12]) // the container's hostname
	}
	if n := countTrue(ids); n != 1 {
		t.Errorf("lease holder %q is %d of the replicas %v, want one", holder, n, ids)
	}

	// A rotation asked for on one replica is worked by the holder; the
	// device fetches from one replica and acks on the other.
	var rot struct {
		Status string `json:"status"`
	}
	c.do(http.MethodPost, fmt.Sprintf("%s/api/devices/%d/rotate", replicas[1], dev.ID), admin, nil).want(t, http.StatusAccepted, &rot)
	var next string
	waitFor(t, time.Minute, "rotation started (new secret handed out)", func() (bool, string) {
		var got struct {
			ClientSecret string `json:"client_secret"`
		}
		r := c.do(http.MethodGet, replicas[1]+"/iot/provisioning", devTok, nil)
		r.want(t, http.StatusOK, &got)
		next = got.ClientSecret
		return next != prov.ClientSecret, "still the current secret"
	})
	newTok, code := c.token(keycloak, dev.ClientID, next)
	if code != http.StatusOK {
		t.Fatalf("token with the new secret: HTTP %d", code)
	}
	c.do(http.MethodPost, replicas[0]+"/iot/provisioning/ack", newTok, map[string]string{"client_secret_sha256": sha256Hex(next)}).
		want(t, http.StatusNoContent, nil)
	for _, base := range replicas {
		var d struct {
			RotationState string `json:"rotation_state"`
		}
		c.do(http.MethodGet, fmt.Sprintf("%s/api/devices/%d", base, dev.ID), admin, nil).want(t, http.StatusOK, &d)
		if d.RotationState != "OK" {
			t.Errorf("%s: device state %s after the ack, want OK", base, d.RotationState)
		}
	}
	if _, code := c.token(keycloak, dev.ClientID, prov.ClientSecret); code == http.StatusOK {
		t.Error("the old secret still works after the confirmed rotation")
	}

	// down leaves no container, network or volume of the project.
	p.must(3*time.Minute, "down", "-v", "--remove-orphans", "--timeout", "20")
	if left := p.leftovers(); len(left) > 0 {
		t.Errorf("after down the engine still has %v", left)
	}
	t.Logf("compose test: %s from up to down", time.Since(began).Round(time.Second))
}

func countTrue(m map[string]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}
