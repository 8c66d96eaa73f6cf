package integration

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// The broker of every stack runs Mosquitto's dynamic security plugin
// (SPEC §19): espmdm manages the accounts over $CONTROL/dynamic-security/v1
// with an admin account of its own, made with the stack.
const (
	// DefaultMQTTAdminUser is espmdm's own broker account in a stack; its
	// password is made per stack.
	DefaultMQTTAdminUser = "espmdm"
	// MQTTAdminRole is the plugin role of espmdm's account: it manages the
	// plugin and is the only one that may publish on iotsupport/#.
	MQTTAdminRole = "espmdm-admin"
	// MQTTAnonymousRole is the role of the plugin's anonymous group: what
	// clients without an account may do while the broker lets them in
	// (publish and subscribe as before accounts, except publishing on
	// iotsupport/#).
	MQTTAnonymousRole = "espmdm-anonymous"
	// DynSecStateFile is the plugin's state file (accounts, roles, groups)
	// in the broker's directory, /mosquitto/data in a container. The
	// plugin rewrites it after every change, so accounts survive a restart
	// of the broker (and of a stack with a data directory).
	DynSecStateFile = "dynamic-security.json"
	// DynSecPluginContainerPath is where the official eclipse-mosquitto
	// image has the plugin; the local stand-in (make images) links it there.
	DynSecPluginContainerPath = "/usr/lib/mosquitto_dynamic_security.so"
)

// DefaultMQTTAnonymous is whether a stack's broker lets clients in without
// an account when Options.MQTTAnonymous and $ESPMDM_STACK_MQTT_ANONYMOUS
// do not say: off, as SPEC §19 wants everywhere espmdm starts a broker
// (espmdm gives every device an account and devices connect with it).
const DefaultMQTTAnonymous = false

// EnvStackMQTTAnonymous ("true"/"1" or "false"/"0") says whether the
// stacks that Start makes without Options.MQTTAnonymous let clients in
// without an account.
const EnvStackMQTTAnonymous = "ESPMDM_STACK_MQTT_ANONYMOUS"

// mosquittoStart makes the plugin's state file on a broker's first start
// and runs mosquitto; compose.yaml mounts the same script.
//
//go:embed compose/mosquitto-start.sh
var mosquittoStart []byte

// MosquittoStartScript returns the script that starts a stack's broker:
// `sh mosquitto-start.sh STATE_FILE CONFIG_FILE` with MQTT_ADMIN_USER and
// MQTT_ADMIN_PASSWORD in the environment makes the dynamic security
// plugin's state file on the first start (espmdm's account and roles) and
// then runs mosquitto.
func MosquittoStartScript() []byte { return append([]byte(nil), mosquittoStart...) }

// anonymousSetting resolves the anonymous switch: opt when set, else
// $ESPMDM_STACK_MQTT_ANONYMOUS, else DefaultMQTTAnonymous.
func anonymousSetting(opt *bool) (bool, error) {
	if opt != nil {
		return *opt, nil
	}
	v := os.Getenv(EnvStackMQTTAnonymous)
	if v == "" {
		return DefaultMQTTAnonymous, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want true or false", EnvStackMQTTAnonymous, v)
	}
	return b, nil
}

// mosquittoConf is a broker configuration: one listener ("PORT [ADDRESS]"),
// anonymous clients let in or not, the dynamic security plugin with its
// state file, and no persistence of its own (sessions and retained messages
// are lost with a restart; the plugin's accounts are not). user, when set,
// is the user a broker started as root runs as ("root": it stays root).
func mosquittoConf(listener string, anonymous bool, plugin, state, user string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listener %s\n", listener)
	fmt.Fprintf(&b, "allow_anonymous %t\n", anonymous)
	fmt.Fprintf(&b, "plugin %s\n", plugin)
	fmt.Fprintf(&b, "plugin_opt_config_file %s\n", state)
	b.WriteString("persistence false\nlog_dest stdout\n")
	if user != "" {
		fmt.Fprintf(&b, "user %s\n", user)
	}
	return b.String()
}

// dynsecPluginPath finds Mosquitto's dynamic security plugin on this
// machine: Debian's multiarch directory, else the usual library
// directories ($ESPMDM_MOSQUITTO_DYNSEC names it elsewhere).
func dynsecPluginPath() (string, error) {
	if p := os.Getenv("ESPMDM_MOSQUITTO_DYNSEC"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("ESPMDM_MOSQUITTO_DYNSEC: %w", err)
		}
		return p, nil
	}
	const name = "mosquitto_dynamic_security.so"
	candidates, _ := filepath.Glob("/usr/lib/*/" + name)
	candidates = append(candidates, "/usr/lib/"+name, "/usr/local/lib/"+name, "/usr/lib64/"+name)
	for _, p := range candidates {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) not found; run `make deps` or install the Debian package mosquitto (2.0 or later)")
}

// findProgram finds a program on PATH, else at fallback.
func findProgram(name, fallback, hint string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if _, err := os.Stat(fallback); err == nil {
		return fallback, nil
	}
	return "", fmt.Errorf("%s not found; %s", name, hint)
}

// mqttCheck succeeds once the broker at addr answers an MQTT 3.1.1 CONNECT
// (with user and password when user is set) with a CONNACK that accepts
// it.
func mqttCheck(addr, user, password string) func(context.Context) error {
	connect := mqttConnectPacket("espmdm-ready", user, password)
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(dl)
		}
		if _, err := c.Write(connect); err != nil {
			return err
		}
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil {
			return fmt.Errorf("MQTT CONNECT: %w", err)
		}
		if ack[0] != 0x20 || ack[3] != 0 {
			return fmt.Errorf("MQTT CONNECT answered % x", ack)
		}
		_, _ = c.Write([]byte{0xE0, 0}) // DISCONNECT
		return nil
	}
}

// mqttConnectPacket is an MQTT 3.1.1 CONNECT with a clean session and a
// keep-alive of 10 s.
func mqttConnectPacket(clientID, user, password string) []byte {
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	flags := byte(0x02) // clean session
	body := append(str("MQTT"), 4, 0, 0, 10)
	payload := str(clientID)
	if user != "" {
		flags |= 0x80 | 0x40
		payload = append(payload, str(user)...)
		payload = append(payload, str(password)...)
	}
	body[7] = flags
	body = append(body, payload...)
	// Remaining length, variable-length encoded.
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	return append(pkt, body...)
}
