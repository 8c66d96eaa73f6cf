package mqtt_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/zap/zaptest"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// startDynSec starts a DynSec on brokerURL (with espmdm's account) that
// stops when the test ends.
func startDynSec(t testing.TB, cfg mqtt.DynSecConfig) *mqtt.DynSec {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	d, err := mqtt.NewDynSec(cfg)
	if err != nil {
		t.Fatalf("NewDynSec: %v", err)
	}
	appCtx, cancel := context.WithCancel(context.Background())
	if err := d.Start(appCtx); err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		defer cancel()
		ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
		defer stop()
		if err := d.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return d
}

func TestDynSecContract(t *testing.T) {
	st := integration.Shared(t)
	portstest.RunBrokerAccountsContract(t, func(t *testing.T) ports.BrokerAccounts {
		return startDynSec(t, mqtt.DynSecConfig{BrokerURL: st.MQTTAdminURL()})
	})
}

// TestDynSecContractOneCommandAMessage runs the contract with batching off,
// on a broker of its own that lets no one in without an account.
func TestDynSecContractOneCommandAMessage(t *testing.T) {
	b := integration.NewBroker(t, false)
	portstest.RunBrokerAccountsContract(t, func(t *testing.T) ports.BrokerAccounts {
		return startDynSec(t, mqtt.DynSecConfig{BrokerURL: b.AdminURL(), MaxBatch: 1})
	})
}

// device is an MQTT v5 client logged in with a device account.
type device struct {
	cli  *paho.Client
	msgs chan *paho.Publish
}

// dialMQTT opens an MQTT v5 session as user (none when empty) and returns
// the client, or the CONNACK's reason code when the broker refuses it.
func dialMQTT(t *testing.T, ctx context.Context, brokerURL, clientID, user, password string) (*device, byte, error) {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		t.Fatalf("dial broker: %v", err)
	}
	d := &device{msgs: make(chan *paho.Publish, 100)}
	d.cli = paho.NewClient(paho.ClientConfig{ClientID: clientID, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.msgs <- pr.Packet
			return true, nil
		}}})
	cp := &paho.Connect{ClientID: clientID, CleanStart: true, KeepAlive: 30}
	if user != "" {
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte(password), true
	}
	ack, err := d.cli.Connect(ctx, cp)
	if err != nil {
		if ack != nil {
			return nil, ack.ReasonCode, err
		}
		return nil, 0, err
	}
	t.Cleanup(func() { _ = d.cli.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return d, 0, nil
}

// login connects as a device account and fails the test when refused.
func login(t *testing.T, ctx context.Context, brokerURL, user, password string) *device {
	t.Helper()
	d, rc, err := dialMQTT(t, ctx, brokerURL, user, user, password)
	if err != nil {
		t.Fatalf("%s cannot log in: reason code %#x: %v", user, rc, err)
	}
	return d
}

// refused checks that the broker refuses a login as user (anonymous when
// empty) with "bad user name or password" or "not authorized".
func refused(t *testing.T, ctx context.Context, brokerURL, user, password, why string) {
	t.Helper()
	d, rc, err := dialMQTT(t, ctx, brokerURL, "probe-"+randHex(4), user, password)
	if err == nil {
		_ = d.cli.Disconnect(&paho.Disconnect{})
		t.Errorf("%s: the broker let %q in", why, user)
		return
	}
	if rc != 0x86 && rc != 0x87 {
		t.Errorf("%s: CONNECT as %q failed with reason code %#x (%v), want 0x86 or 0x87", why, user, rc, err)
	}
}

// subscribeEach subscribes to each filter on its own and returns the
// reason code the broker gave each.
func (d *device) subscribeEach(t *testing.T, ctx context.Context, filters ...string) map[string]byte {
	t.Helper()
	got := map[string]byte{}
	for _, f := range filters {
		sa, err := d.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: f, QoS: 1}}})
		if sa == nil {
			t.Fatalf("subscribe %s: %v", f, err)
		}
		got[f] = sa.Reasons[0]
	}
	return got
}

// drain returns what arrived within d.
func (d *device) drain(wait time.Duration) []*paho.Publish {
	var got []*paho.Publish
	deadline := time.After(wait)
	for {
		select {
		case p := <-d.msgs:
			got = append(got, p)
		case <-deadline:
			return got
		}
	}
}

func topicsIn(ps []*paho.Publish) []string {
	var ts []string
	for _, p := range ps {
		ts = append(ts, p.Topic)
	}
	return ts
}

// newDeviceAccount makes an enabled account for a new client id of model
// code and returns the client id and password.
func newDeviceAccount(t *testing.T, ctx context.Context, a ports.BrokerAccounts, code string) (string, string) {
	t.Helper()
	id := model.ClientID(code, randKey())
	pw := portstest.NewBrokerPassword()
	if err := a.EnsureDeviceAccount(ctx, model.BrokerAccount{ClientID: id, Password: pw}); err != nil {
		t.Fatalf("EnsureDeviceAccount %s: %v", id, err)
	}
	return id, pw
}

func randKey() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := []byte(randHex(8))
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:8])
}

// TestBrokerRefusesAnonymousWhenSwitchedOff: with anonymous access off
// (SPEC §19's broker), a client without an account, one with an unknown
// account and one with a wrong password are refused; espmdm's account
// gets in.
func TestBrokerRefusesAnonymousWhenSwitchedOff(t *testing.T) {
	b := integration.NewBroker(t, false)
	ctx := ctxT(t, time.Minute)
	refused(t, ctx, b.URL, "", "", "anonymous")
	refused(t, ctx, b.URL, "iotdevice-nobody-abcdefgh", "x", "unknown account")
	refused(t, ctx, b.URL, b.AdminUser, b.AdminPassword+"x", "espmdm's account with a wrong password")
	if _, rc, err := dialMQTT(t, ctx, b.URL, "espmdm-"+randHex(4), b.AdminUser, b.AdminPassword); err != nil {
		t.Fatalf("espmdm's account is refused: %#x %v", rc, err)
	}
}

// TestDeviceAccountsKeepDevicesApart is SPEC §19's promise on a broker
// without anonymous access: device A, logged in with its account, receives
// espmdm's notifications on its own topics and on its model's firmware
// topic; its subscriptions to B's topics, to iotsupport/# and to
// everything are refused and deliver nothing of B's; its publishes reach
// nobody.
func TestDeviceAccountsKeepDevicesApart(t *testing.T) {
	b := integration.NewBroker(t, false)
	ctx := ctxT(t, 2*time.Minute)
	accounts := startDynSec(t, mqtt.DynSecConfig{BrokerURL: b.AdminURL()})
	code, other := modelCode(), modelCode()
	idA, pwA := newDeviceAccount(t, ctx, accounts, code)
	idB, pwB := newDeviceAccount(t, ctx, accounts, code)
	idC, pwC := newDeviceAccount(t, ctx, accounts, other)

	// espmdm's own view: its account may subscribe to everything.
	admin, rc, err := dialMQTT(t, ctx, b.URL, "espmdm-watch-"+randHex(4), b.AdminUser, b.AdminPassword)
	if err != nil {
		t.Fatalf("espmdm's account: %#x %v", rc, err)
	}
	if got := admin.subscribeEach(t, ctx, "#"); got["#"] != 1 {
		t.Fatalf("espmdm's account may not subscribe to #: reason %#x", got["#"])
	}

	a := login(t, ctx, b.URL, idA, pwA)
	devB := login(t, ctx, b.URL, idB, pwB)
	devC := login(t, ctx, b.URL, idC, pwC)
	// The filters a device may use, on a connection of their own (a
	// message matching several subscriptions of one session arrives once
	// for each).
	probe, rc, err := dialMQTT(t, ctx, b.URL, idA+"-probe", idA, pwA)
	if err != nil {
		t.Fatalf("A's second connection: %#x %v", rc, err)
	}
	for f, rc := range probe.subscribeEach(t, ctx, "iotsupport/"+idA+"/rotation", "iotsupport/"+idA+"/config", "iotsupport/"+idA+"/+") {
		if rc != 1 {
			t.Errorf("A's subscription to %s: reason %#x, want 1 (granted QoS 1)", f, rc)
		}
	}
	_ = probe.cli.Disconnect(&paho.Disconnect{})
	for f, rc := range a.subscribeEach(t, ctx, "iotsupport/"+idA+"/#", "iotsupport/"+code+"/firmware") {
		if rc != 1 {
			t.Errorf("A's subscription to %s: reason %#x, want 1 (granted QoS 1)", f, rc)
		}
	}
	denied := []string{"iotsupport/" + idB + "/#", "iotsupport/" + idB + "/rotation", "iotsupport/#", "iotsupport/+/rotation",
		"iotsupport/+/firmware", "iotsupport/" + other + "/firmware", "#", "$SYS/#", mqtt.DynSecResponseTopic, "$CONTROL/#"}
	for f, rc := range a.subscribeEach(t, ctx, denied...) {
		if rc < 0x80 {
			t.Errorf("A's subscription to %s: reason %#x, want a refusal (0x87)", f, rc)
		}
	}
	devB.subscribeEach(t, ctx, "iotsupport/"+idB+"/#", "iotsupport/"+code+"/firmware")
	devC.subscribeEach(t, ctx, "iotsupport/"+idC+"/#", "iotsupport/"+other+"/firmware")

	// espmdm's notifications, through the Notifier as espmdm runs it.
	n := startNotifier(t, mqtt.Config{BrokerURL: b.AdminURL()})
	for _, id := range []string{idA, idB, idC} {
		if err := n.RotationNudge(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := n.ConfigChanged(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []string{code, other} {
		if err := n.FirmwareReleased(ctx, c, "9.9.9"); err != nil {
			t.Fatal(err)
		}
	}
	wantEach := map[*device][]string{
		a:    {"iotsupport/" + idA + "/rotation", "iotsupport/" + idA + "/config", "iotsupport/" + code + "/firmware"},
		devB: {"iotsupport/" + idB + "/rotation", "iotsupport/" + idB + "/config", "iotsupport/" + code + "/firmware"},
		devC: {"iotsupport/" + idC + "/rotation", "iotsupport/" + idC + "/config", "iotsupport/" + other + "/firmware"},
	}
	names := map[*device]string{a: "A", devB: "B", devC: "C"}
	for d, want := range wantEach {
		got := map[string]int{}
		deadline := time.After(10 * time.Second)
	collect:
		for len(got) < len(want) {
			select {
			case p := <-d.msgs:
				got[p.Topic]++
			case <-deadline:
				break collect
			}
		}
		// Anything more that comes is a leak.
		for _, p := range d.drain(500 * time.Millisecond) {
			got[p.Topic]++
		}
		for _, topic := range want {
			if got[topic] != 1 {
				t.Errorf("%s received %s %d times, want once", names[d], topic, got[topic])
			}
			delete(got, topic)
		}
		for topic := range got {
			t.Errorf("%s received %s, which is not its", names[d], topic)
		}
	}
	seen := len(admin.drain(500 * time.Millisecond))
	if seen == 0 {
		t.Errorf("espmdm's watcher on # saw none of espmdm's notifications")
	}

	// A's publishes reach nobody: refused, and neither B nor espmdm's
	// watcher sees them.
	for _, topic := range []string{"iotsupport/" + idB + "/rotation", "iotsupport/" + code + "/firmware", "iotsupport/" + idA + "/config",
		"devices/" + idA + "/state", mqtt.DynSecTopic} {
		payload := []byte(`{"commands":[{"command":"createClient","username":"iotdevice-evil-abcdefgh","password":"evil-password-evil-password"}]}`)
		resp, err := a.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
		if err == nil || resp == nil || resp.ReasonCode != 0x87 {
			t.Errorf("A's publish on %s: %+v, %v; want refused with 0x87", topic, resp, err)
		}
	}
	for d, name := range map[*device]string{devB: "B", devC: "C", admin: "espmdm's watcher"} {
		if got := d.drain(time.Second); len(got) != 0 {
			t.Errorf("%s received A's publishes: %v", name, topicsIn(got))
		}
	}
	list, err := accounts.ListDeviceAccounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range list {
		if strings.Contains(info.ClientID, "evil") {
			t.Errorf("A's publish on %s made an account: %s", mqtt.DynSecTopic, info.ClientID)
		}
	}
}

// TestDisabledAccountCannotConnect: disabling an account disconnects its
// client and refuses it, enabling lets it in again, deleting removes it.
func TestDisabledAccountCannotConnect(t *testing.T) {
	b := integration.NewBroker(t, false)
	ctx := ctxT(t, 2*time.Minute)
	accounts := startDynSec(t, mqtt.DynSecConfig{BrokerURL: b.AdminURL()})
	id, pw := newDeviceAccount(t, ctx, accounts, modelCode())
	d := login(t, ctx, b.URL, id, pw)

	if err := accounts.DisableDeviceAccount(ctx, id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.cli.Done():
	case <-time.After(10 * time.Second):
		t.Error("the disabled account's connection is still up")
	}
	refused(t, ctx, b.URL, id, pw, "disabled account")

	if err := accounts.EnableDeviceAccount(ctx, id); err != nil {
		t.Fatal(err)
	}
	d = login(t, ctx, b.URL, id, pw)
	refused(t, ctx, b.URL, id, pw+"x", "enabled account with a wrong password")

	if err := accounts.DeleteDeviceAccount(ctx, id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.cli.Done():
	case <-time.After(10 * time.Second):
		t.Error("the deleted account's connection is still up")
	}
	refused(t, ctx, b.URL, id, pw, "deleted account")
	list, err := accounts.ListDeviceAccounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range list {
		if info.ClientID == id {
			t.Errorf("%s still listed after DeleteDeviceAccount", id)
		}
	}
	// Its role went with it: the plugin knows no role of that name.
	if raw := adminCommand(t, ctx, b.AdminURL(), `{"command":"getRole","rolename":"`+id+`"}`); !strings.Contains(raw, "Role not found") {
		t.Errorf("getRole %s after the delete answered %s, want Role not found", id, raw)
	}
}

// TestBrokerRestartKeepsAccounts: the plugin's state file outlives a
// restart of the broker (same directory) and a new broker process on the
// same directory (a stack's data directory); DynSec reconnects by itself.
func TestBrokerRestartKeepsAccounts(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	b := integration.NewBroker(t, false)
	accounts := startDynSec(t, mqtt.DynSecConfig{BrokerURL: b.AdminURL()})
	code := modelCode()
	id, pw := newDeviceAccount(t, ctx, accounts, code)
	off, offPW := newDeviceAccount(t, ctx, accounts, code)
	if err := accounts.DisableDeviceAccount(ctx, off); err != nil {
		t.Fatal(err)
	}

	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := accounts.Ping(ctx); !errors.Is(err, model.ErrUnavailable) {
		t.Errorf("Ping with the broker down = %v, want ErrUnavailable", err)
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	login(t, ctx, b.URL, id, pw)
	refused(t, ctx, b.URL, off, offPW, "an account disabled before the restart")
	list, err := accounts.ListDeviceAccounts(ctx) // the same DynSec, connected anew
	if err != nil {
		t.Fatalf("ListDeviceAccounts after the restart: %v", err)
	}
	found := map[string]model.BrokerAccountInfo{}
	for _, info := range list {
		found[info.ClientID] = info
	}
	if got, ok := found[id]; !ok || got.Disabled || len(got.Problems) != 0 {
		t.Errorf("%s after the restart: %+v (listed %t)", id, got, ok)
	}
	if got, ok := found[off]; !ok || !got.Disabled {
		t.Errorf("%s after the restart: %+v (listed %t), want disabled", off, got, ok)
	}
}

// TestBrokerDataDirKeepsAccounts: a broker started anew on the directory
// of an earlier one (as a stack with a data directory is; processes
// launcher) has its accounts, and espmdm's account keeps its password.
func TestBrokerDataDirKeepsAccounts(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	dir := t.TempDir()
	opts := integration.BrokerOptions{Launcher: "processes", Dir: dir, AdminPassword: "admin-" + randHex(12)}
	first, err := integration.StartBroker(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := mqtt.NewDynSec(mqtt.DynSecConfig{BrokerURL: first.AdminURL(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := accounts.Start(ctx); err != nil {
		t.Fatal(err)
	}
	id, pw := newDeviceAccount(t, ctx, accounts, modelCode())
	if err := accounts.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}
	second, err := integration.StartBroker(ctx, opts)
	if err != nil {
		t.Fatalf("a broker on the same directory: %v", err)
	}
	t.Cleanup(func() { _ = second.Close(context.Background()) })
	login(t, ctx, second.URL, id, pw)
}

// TestEnsureRepairsAccount: an account changed behind espmdm's back
// (its role's access widened, an extra role and group, disabled) is listed
// with its problems, and EnsureDeviceAccount puts it back as made.
func TestEnsureRepairsAccount(t *testing.T) {
	b := integration.NewBroker(t, false)
	ctx := ctxT(t, 2*time.Minute)
	accounts := startDynSec(t, mqtt.DynSecConfig{BrokerURL: b.AdminURL()})
	id, _ := newDeviceAccount(t, ctx, accounts, modelCode())
	group := "tamper-" + randHex(3)
	for _, cmd := range []string{
		`{"command":"removeRoleACL","rolename":"` + id + `","acltype":"publishClientSend","topic":"#"}`,
		`{"command":"addRoleACL","rolename":"` + id + `","acltype":"publishClientSend","topic":"iotsupport/#","allow":true,"priority":5}`,
		`{"command":"addClientRole","username":"` + id + `","rolename":"` + integration.MQTTAdminRole + `"}`,
		`{"command":"createGroup","groupname":"` + group + `"}`,
		`{"command":"addGroupClient","groupname":"` + group + `","username":"` + id + `"}`,
		`{"command":"disableClient","username":"` + id + `"}`,
	} {
		if raw := adminCommand(t, ctx, b.AdminURL(), cmd); strings.Contains(raw, `"error"`) {
			t.Fatalf("tampering: %s answered %s", cmd, raw)
		}
	}
	list, err := accounts.ListDeviceAccounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, info := range list {
		if info.ClientID == id {
			problems = info.Problems
		}
	}
	joined := strings.Join(problems, "\n")
	for _, want := range []string{"has allow publishClientSend iotsupport/#", "lacks deny publishClientSend #",
		"other roles: " + integration.MQTTAdminRole, "groups: " + group} {
		if !strings.Contains(joined, want) {
			t.Errorf("problems %q do not say %q", problems, want)
		}
	}

	pw := portstest.NewBrokerPassword()
	if err := accounts.EnsureDeviceAccount(ctx, model.BrokerAccount{ClientID: id, Password: pw}); err != nil {
		t.Fatalf("EnsureDeviceAccount to repair: %v", err)
	}
	list, err = accounts.ListDeviceAccounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range list {
		if info.ClientID == id && (len(info.Problems) != 0 || info.Disabled) {
			t.Errorf("after the repair: %+v", info)
		}
	}
	d := login(t, ctx, b.URL, id, pw)
	resp, err := d.cli.Publish(ctx, &paho.Publish{Topic: "iotsupport/" + id + "/config", QoS: 1})
	if err == nil || resp == nil || resp.ReasonCode != 0x87 {
		t.Errorf("the repaired account may publish: %+v, %v", resp, err)
	}
}

// adminCommand sends one raw command to the plugin as espmdm's account and
// returns the plugin's answer to it.
func adminCommand(t *testing.T, ctx context.Context, adminURL, command string) string {
	t.Helper()
	u, _ := url.Parse(adminURL)
	pw, _ := u.User.Password()
	d, rc, err := dialMQTT(t, ctx, adminURL, "espmdm-raw-"+randHex(4), u.User.Username(), pw)
	if err != nil {
		t.Fatalf("admin login: %#x %v", rc, err)
	}
	defer d.cli.Disconnect(&paho.Disconnect{})
	if got := d.subscribeEach(t, ctx, mqtt.DynSecResponseTopic); got[mqtt.DynSecResponseTopic] != 0 && got[mqtt.DynSecResponseTopic] != 1 {
		t.Fatalf("subscribe to the plugin's answers: %#x", got[mqtt.DynSecResponseTopic])
	}
	corr := randHex(6)
	var cmd map[string]any
	if err := json.Unmarshal([]byte(command), &cmd); err != nil {
		t.Fatal(err)
	}
	cmd["correlationData"] = corr
	payload, _ := json.Marshal(map[string]any{"commands": []any{cmd}})
	if _, err := d.cli.Publish(ctx, &paho.Publish{Topic: mqtt.DynSecTopic, QoS: 0, Payload: payload}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case p := <-d.msgs:
			var resp struct {
				Responses []json.RawMessage `json:"responses"`
			}
			_ = json.Unmarshal(p.Payload, &resp)
			for _, r := range resp.Responses {
				if strings.Contains(string(r), corr) {
					return string(r)
				}
			}
		case <-ctx.Done():
			t.Fatalf("no answer to %s", command)
		}
	}
}

// TestDynSecErrors: a broker that cannot be reached, a wrong password and
// an account without the plugin's admin role are *model.UnavailableError
// (Service mqtt) that never repeat a password.
func TestDynSecErrors(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 2*time.Minute)
	u, _ := url.Parse(st.MQTTURL)
	account := model.BrokerAccount{ClientID: model.ClientID(modelCode(), randKey()), Password: portstest.NewBrokerPassword()}

	// A device's account is no admin: the plugin's answers are closed to it.
	b := integration.NewBroker(t, false)
	admin := startDynSec(t, mqtt.DynSecConfig{BrokerURL: b.AdminURL()})
	devID, devPW := newDeviceAccount(t, ctx, admin, modelCode())
	devURL, _ := url.Parse(b.URL)
	devURL.User = url.UserPassword(devID, devPW)

	for _, c := range []struct {
		name, url, secret string
		timeout           time.Duration
		want              string
	}{
		{"nothing listens", "mqtt://" + deadPort(t), "", 0, "reach the broker"},
		{"wrong password", "mqtt://" + st.MQTTAdminUser + ":wrong-" + randHex(8) + "@" + u.Host, "wrong-", 0, "refused the account"},
		{"silent broker", "mqtt://" + silentBroker(t), "", 2 * time.Second, ""},
		{"not an admin", devURL.String(), devPW, 0, "admin role"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := startDynSec(t, mqtt.DynSecConfig{BrokerURL: c.url, CallTimeout: c.timeout, ConnectTimeout: 5 * time.Second})
			began := time.Now()
			for _, err := range []error{d.Ping(ctx), d.EnsureDeviceAccount(ctx, account)} {
				var ue *model.UnavailableError
				if !errors.As(err, &ue) || ue.Service != model.ServiceBroker {
					t.Fatalf("got %v, want a *model.UnavailableError of service %q", err, model.ServiceBroker)
				}
				if !strings.Contains(err.Error(), c.want) {
					t.Errorf("error %q does not say %q", err, c.want)
				}
				if (c.secret != "" && strings.Contains(err.Error(), c.secret)) || strings.Contains(err.Error(), account.Password) {
					t.Errorf("error %q repeats a password", err)
				}
			}
			if el := time.Since(began); el > 15*time.Second {
				t.Errorf("the two failures took %s", el)
			}
		})
	}
}

// TestDynSecCallTimeoutAndCancel: a call is bounded by CallTimeout (the
// broker's failure) and by its context (the caller's).
func TestDynSecCallTimeoutAndCancel(t *testing.T) {
	d := startDynSec(t, mqtt.DynSecConfig{BrokerURL: "mqtt://" + silentBroker(t), CallTimeout: time.Second, ConnectTimeout: time.Minute})
	began := time.Now()
	err := d.Ping(context.Background())
	if !errors.Is(err, model.ErrUnavailable) || time.Since(began) > 10*time.Second {
		t.Errorf("Ping on a silent broker = %v after %s, want ErrUnavailable after about 1s", err, time.Since(began))
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	if err := d.Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Ping cancelled = %v, want context.Canceled", err)
	}
}

// TestDynSecStopped: calls before Start and after Stop fail at once.
func TestDynSecStopped(t *testing.T) {
	st := integration.Shared(t)
	d, err := mqtt.NewDynSec(mqtt.DynSecConfig{BrokerURL: st.MQTTAdminURL()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Ping(t.Context()); !errors.Is(err, mqtt.ErrDynSecNotRunning) {
		t.Errorf("Ping before Start = %v", err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := d.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := d.Ping(t.Context()); !errors.Is(err, mqtt.ErrDynSecNotRunning) {
		t.Errorf("Ping after Stop = %v", err)
	}
	if err := d.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded")
	}
}

// TestDynSecSharesMessagesAcrossInstances: two DynSecs as the same admin
// (two espmdm replicas) each get their own answers although the plugin
// sends every answer to both.
func TestDynSecSharesMessagesAcrossInstances(t *testing.T) {
	st := integration.Shared(t)
	ctx := ctxT(t, 2*time.Minute)
	one := startDynSec(t, mqtt.DynSecConfig{BrokerURL: st.MQTTAdminURL()})
	two := startDynSec(t, mqtt.DynSecConfig{BrokerURL: st.MQTTAdminURL()})
	code := modelCode()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		a := one
		if i%2 == 1 {
			a = two
		}
		wg.Go(func() {
			id := model.ClientID(code, randKey())
			if err := a.EnsureDeviceAccount(ctx, model.BrokerAccount{ClientID: id, Password: portstest.NewBrokerPassword()}); err != nil {
				errs <- fmt.Errorf("%s: %w", id, err)
				return
			}
			errs <- a.DeleteDeviceAccount(ctx, id)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
