package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The readiness check's CONNECT is a well-formed MQTT 3.1.1 packet, with
// and without espmdm's account (a 200-byte password needs two bytes of
// remaining length).
func TestMQTTConnectPacket(t *testing.T) {
	for _, c := range []struct{ user, password string }{{"", ""}, {"espmdm", strings.Repeat("p", 200)}} {
		b := mqttConnectPacket("espmdm-ready", c.user, c.password)
		if b[0] != 0x10 {
			t.Fatalf("packet type %#x, want CONNECT", b[0])
		}
		// Remaining length.
		n, mult, i := 0, 1, 1
		for ; ; i++ {
			n += int(b[i]&0x7f) * mult
			mult *= 128
			if b[i]&0x80 == 0 {
				break
			}
		}
		body := b[i+1:]
		if n != len(body) {
			t.Fatalf("user %q: remaining length %d, body %d bytes", c.user, n, len(body))
		}
		str := func() string {
			l := int(body[0])<<8 | int(body[1])
			s := string(body[2 : 2+l])
			body = body[2+l:]
			return s
		}
		if name := str(); name != "MQTT" || body[0] != 4 {
			t.Errorf("protocol %q level %d, want MQTT 4", name, body[0])
		}
		flags := body[1]
		body = body[4:] // level, flags, keep-alive
		wantFlags := byte(0x02)
		if c.user != "" {
			wantFlags |= 0xC0
		}
		if flags != wantFlags {
			t.Errorf("user %q: flags %#x, want %#x", c.user, flags, wantFlags)
		}
		if id := str(); id != "espmdm-ready" {
			t.Errorf("client id %q", id)
		}
		if c.user != "" {
			if u, p := str(), str(); u != c.user || p != c.password {
				t.Errorf("user %q password %d bytes, want %q and %d", u, len(p), c.user, len(c.password))
			}
		}
		if len(body) != 0 {
			t.Errorf("user %q: %d bytes left over", c.user, len(body))
		}
	}
}

// The start script makes the plugin's state file on the first start —
// espmdm's account with the admin role, the anonymous group — keeps it on
// later ones, and refuses to start without a usable account.
func TestMosquittoStartScript(t *testing.T) {
	ctrl, err := findProgram("mosquitto_ctrl", "/usr/bin/mosquitto_ctrl", "install the Debian package mosquitto")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "start.sh")
	if err := os.WriteFile(script, mosquittoStart, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "data", DynSecStateFile)
	run := func(user, password string) (string, error) {
		// MOSQUITTO=echo: the script's last step prints instead of running
		// a broker.
		cmd := exec.Command("/bin/sh", script, state, "/the/conf")
		cmd.Env = append(os.Environ(), "MOSQUITTO=echo", "MOSQUITTO_CTRL="+ctrl, "MQTT_ADMIN_USER="+user, "MQTT_ADMIN_PASSWORD="+password)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, bad := range []struct{ user, password, want string }{
		{"espmdm", "", "MQTT_ADMIN_PASSWORD"},
		{"", "pw", "MQTT_ADMIN_USER"},
		{`esp"mdm`, "pw", "MQTT_ADMIN_USER"},
	} {
		if out, err := run(bad.user, bad.password); err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("user %q password %q: %v %q, want a failure naming %s", bad.user, bad.password, err, out, bad.want)
		}
		if _, err := os.Stat(state); err == nil {
			t.Fatalf("a failed first start left %s", state)
		}
	}

	out, err := run("espmdm", "first-password")
	if err != nil || strings.TrimSpace(out) != "-c /the/conf" {
		t.Fatalf("first start: %v %q", err, out)
	}
	first, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(first, []byte("first-password")) {
		t.Errorf("the state file holds the password in clear")
	}
	var doc struct {
		Clients []struct {
			Username, Password, Salt string
			Iterations               int
			Roles                    []struct{ Rolename string }
		}
		Groups []struct {
			Groupname string
			Roles     []struct{ Rolename string }
		}
		AnonymousGroup string
		Roles          []struct {
			Rolename string
			ACLs     []struct {
				ACLType string
				Topic   string
				Allow   bool
			}
		}
	}
	if err := json.Unmarshal(first, &doc); err != nil {
		t.Fatalf("the state file is not JSON: %v\n%s", err, first)
	}
	if len(doc.Clients) != 1 || doc.Clients[0].Username != "espmdm" || doc.Clients[0].Password == "" || doc.Clients[0].Salt == "" ||
		doc.Clients[0].Iterations <= 0 || len(doc.Clients[0].Roles) != 1 || doc.Clients[0].Roles[0].Rolename != MQTTAdminRole {
		t.Errorf("clients = %+v, want espmdm with a hashed password and role %s", doc.Clients, MQTTAdminRole)
	}
	if doc.AnonymousGroup != "anonymous" || len(doc.Groups) != 1 || doc.Groups[0].Roles[0].Rolename != MQTTAnonymousRole {
		t.Errorf("anonymous group %q, groups %+v", doc.AnonymousGroup, doc.Groups)
	}
	roles := map[string]bool{}
	for _, r := range doc.Roles {
		roles[r.Rolename] = true
		for _, a := range r.ACLs {
			if a.ACLType == "publishClientSend" && a.Topic == "iotsupport/#" && a.Allow != (r.Rolename == MQTTAdminRole) {
				t.Errorf("role %s: publishing on iotsupport/# allowed %t", r.Rolename, a.Allow)
			}
		}
	}
	if !roles[MQTTAdminRole] || !roles[MQTTAnonymousRole] {
		t.Errorf("roles %v", roles)
	}

	// A later start keeps the file, whatever password it is given.
	if out, err := run("espmdm", "other-password"); err != nil {
		t.Fatalf("second start: %v %q", err, out)
	}
	if again, _ := os.ReadFile(state); !bytes.Equal(again, first) {
		t.Errorf("a later start changed the state file")
	}
}

// espmdm's broker account goes through the env file in MQTT_URL (what
// `espmdm serve` reads); an attached stack's MQTTURL is without it, as
// devices get it.
func TestMQTTAccountSurvivesAttach(t *testing.T) {
	for _, anonymous := range []bool{true, false} {
		st := &Stack{DatabaseURL: "postgres://x", KeycloakURL: "http://k", MQTTURL: "mqtt://127.0.0.1:1883", TokenURL: "http://k/token",
			MQTTAdminUser: "espmdm", MQTTAdminPassword: "pw-" + strings.Repeat("x", 8), MQTTAnonymous: anonymous}
		if got, want := st.ServeEnv()["MQTT_URL"], "mqtt://espmdm:pw-xxxxxxxx@127.0.0.1:1883"; got != want {
			t.Errorf("ServeEnv MQTT_URL = %q, want %q", got, want)
		}
		path := filepath.Join(t.TempDir(), "stack.env")
		if err := WriteEnvFile(path, st.Env()); err != nil {
			t.Fatal(err)
		}
		got, err := Attach(path)
		if err != nil {
			t.Fatal(err)
		}
		if got.MQTTURL != st.MQTTURL || got.MQTTAdminUser != st.MQTTAdminUser || got.MQTTAdminPassword != st.MQTTAdminPassword ||
			got.MQTTAnonymous != anonymous || got.MQTTAdminURL() != st.MQTTAdminURL() {
			t.Errorf("attached: %q %q %q %t, want %q %q %q %t", got.MQTTURL, got.MQTTAdminUser, got.MQTTAdminPassword, got.MQTTAnonymous,
				st.MQTTURL, st.MQTTAdminUser, st.MQTTAdminPassword, anonymous)
		}
	}
}

// A data directory from before broker accounts gets espmdm's broker
// password added (and kept from then on).
func TestPersistedAddsMQTTAdminPassword(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stack.env")
	if _, err := (&Stack{AdminClientSecret: "a", OperatorClientSecret: "o", ViewerClientSecret: "v", KeycloakAdminPassword: "k"}).persisted(path, false); err != nil {
		t.Fatal(err)
	}
	env, _ := ReadEnvFile(path)
	delete(env, "MQTT_ADMIN_PASSWORD") // as an older run wrote it
	if err := WriteEnvFile(path, env); err != nil {
		t.Fatal(err)
	}
	second := &Stack{MQTTAdminPassword: "new-broker-password"}
	if _, err := second.persisted(path, false); err != nil {
		t.Fatalf("an older data directory: %v", err)
	}
	third := &Stack{MQTTAdminPassword: "another"}
	if _, err := third.persisted(path, false); err != nil {
		t.Fatal(err)
	}
	if third.MQTTAdminPassword != "new-broker-password" || third.AdminClientSecret != "a" {
		t.Errorf("third run: broker password %q, admin secret %q; want the second run's and the first's", third.MQTTAdminPassword, third.AdminClientSecret)
	}
}

func TestAnonymousSetting(t *testing.T) {
	on, off := true, false
	for _, c := range []struct {
		opt  *bool
		env  string
		want bool
		err  bool
	}{
		{nil, "", DefaultMQTTAnonymous, false},
		{nil, "false", false, false},
		{nil, "1", true, false},
		{&on, "false", true, false},
		{&off, "true", false, false},
		{nil, "maybe", false, true},
	} {
		t.Setenv(EnvStackMQTTAnonymous, c.env)
		got, err := anonymousSetting(c.opt)
		if (err != nil) != c.err || (err == nil && got != c.want) {
			t.Errorf("option %v, $%s=%q: %t, %v; want %t (error %t)", c.opt, EnvStackMQTTAnonymous, c.env, got, err, c.want, c.err)
		}
	}
}
