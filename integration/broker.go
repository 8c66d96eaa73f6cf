package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"testing"
	"time"
)

// Broker is an MQTT broker of its own, started as a stack's broker is
// (Mosquitto with the dynamic security plugin and espmdm's account), for
// tests that need what the shared stack's broker does not have — anonymous
// access off, say — or that restart a broker without disturbing the
// stack's.
type Broker struct {
	// URL is the broker without credentials, mqtt://127.0.0.1:PORT.
	URL string
	// AdminUser and AdminPassword are espmdm's account (MQTTAdminRole).
	AdminUser     string
	AdminPassword string
	// Anonymous tells whether clients without an account are let in.
	Anonymous bool

	dir  string
	keep bool // Options.Dir: Close leaves it
	svc  Service
}

// BrokerOptions configure StartBroker.
type BrokerOptions struct {
	// Launcher is "auto", "processes" or "containers"; empty means
	// $ESPMDM_LAUNCHER (else auto).
	Launcher string
	// Anonymous lets clients without an account in.
	Anonymous bool
	// Log receives the broker's output; nil discards it (it is also kept
	// in the broker's directory and named in start errors).
	Log io.Writer
	// Dir, when set, is the broker's directory, kept by Close: a broker
	// started again on it (with the same AdminPassword) has the accounts
	// of the earlier one, as a stack's broker on a data directory does.
	// Empty means a temporary directory that Close removes. Processes
	// launcher only (a container keeps its data inside).
	Dir string
	// AdminPassword is espmdm's account's password on the first start in a
	// directory; empty means a random one.
	AdminPassword string
}

// StartBroker starts a broker in a temporary directory and returns once it
// accepts espmdm's account. Close stops and removes it.
func StartBroker(ctx context.Context, opts BrokerOptions) (b *Broker, err error) {
	name := opts.Launcher
	if name == "" {
		name = os.Getenv("ESPMDM_LAUNCHER")
	}
	version := envOr("ESPMDM_KEYCLOAK_VERSION", DefaultKeycloakVersion)
	launcher, _, err := chooseLauncher(ctx, name, Images{}.withDefaults(version))
	if err != nil {
		return nil, err
	}
	dir, keep := opts.Dir, opts.Dir != ""
	if keep && launcher.Name() != "processes" {
		return nil, fmt.Errorf("a broker directory needs the processes launcher, not %s", launcher.Name())
	}
	if keep {
		err = os.MkdirAll(dir, 0o755)
	} else {
		dir, err = os.MkdirTemp("", "espmdm-broker-")
	}
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		if !keep {
			os.RemoveAll(dir)
		}
		return nil, err
	}
	password := opts.AdminPassword
	if password == "" {
		password = randomSecret()
	}
	b = &Broker{AdminUser: DefaultMQTTAdminUser, AdminPassword: password, Anonymous: opts.Anonymous, dir: dir, keep: keep}
	defer func() {
		if err != nil {
			_ = b.Close(context.Background())
			b = nil
		}
	}()
	ports, err := freePorts(1)
	if err != nil {
		return b, err
	}
	b.URL = fmt.Sprintf("mqtt://127.0.0.1:%d", ports[0])
	log := opts.Log
	if log == nil {
		log = io.Discard
	}
	if b.svc, err = launcher.NewMosquitto(MosquittoSpec{Port: ports[0], Dir: dir, Log: log,
		AdminUser: b.AdminUser, AdminPassword: b.AdminPassword, Anonymous: opts.Anonymous}); err != nil {
		return b, err
	}
	if err := b.svc.Start(ctx); err != nil {
		return b, fmt.Errorf("start broker: %w", err)
	}
	return b, nil
}

// AdminURL is URL with espmdm's account.
func (b *Broker) AdminURL() string {
	u, _ := url.Parse(b.URL)
	u.User = url.UserPassword(b.AdminUser, b.AdminPassword)
	return u.String()
}

// Stop stops the broker, keeping its port and data (the plugin's state
// file with the accounts).
func (b *Broker) Stop(ctx context.Context) error { return b.svc.Stop(ctx) }

// Start starts a broker stopped with Stop and waits until it accepts
// espmdm's account again.
func (b *Broker) Start(ctx context.Context) error { return b.svc.Start(ctx) }

// Close stops the broker and removes it, and its directory unless
// BrokerOptions.Dir named it.
func (b *Broker) Close(ctx context.Context) error {
	var errs []error
	if b.svc != nil {
		errs = append(errs, b.svc.Stop(ctx))
		if t, ok := b.svc.(terminator); ok {
			errs = append(errs, t.Terminate(ctx))
		}
	}
	if !b.keep {
		errs = append(errs, os.RemoveAll(b.dir))
	}
	return errors.Join(errs...)
}

// NewBroker starts a broker for the test with the launcher of the test
// binary's stack (see Shared), and closes it when the test ends. It fails
// the test when the broker cannot be started.
func NewBroker(t testing.TB, anonymous bool) *Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := BrokerOptions{Anonymous: anonymous}
	if l := stackLog(); l != nil {
		opts.Log = l
	}
	if l := Shared(t).Launcher; l != "" {
		opts.Launcher = l
	}
	b, err := StartBroker(ctx, opts)
	if err != nil {
		t.Fatalf("start a broker of the test's own: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("close the test's broker: %v", err)
		}
	})
	return b
}
