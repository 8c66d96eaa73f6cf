package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// Service is one running (or stopped) service of a stack.
type Service interface {
	Name() ServiceName
	// Start starts the service and blocks until it is ready.
	Start(ctx context.Context) error
	// Stop stops it, keeping its data; stopping a stopped service is a no-op.
	Stop(ctx context.Context) error
}

// PostgresSpec describes the PostgreSQL service to create.
type PostgresSpec struct {
	Port int
	Dir  string
	Log  io.Writer
}

// MosquittoSpec describes the MQTT broker to create.
type MosquittoSpec struct {
	Port int
	Dir  string
	Log  io.Writer
}

// KeycloakSpec describes the Keycloak service to create.
type KeycloakSpec struct {
	Port, ManagementPort int
	Dir                  string
	Version              string
	CacheDir             string
	Realm                string
	RealmJSON            []byte
	// Env resolves the realm import's placeholders.
	Env map[string]string
	Log io.Writer
}

// Launcher creates the services of a stack.
type Launcher interface {
	Name() string
	NewPostgres(PostgresSpec) (Service, error)
	NewMosquitto(MosquittoSpec) (Service, error)
	NewKeycloak(KeycloakSpec) (Service, error)
}

// NewLauncher returns the launcher called name: "processes", "containers",
// or "auto"/"" (containers when a Docker engine answers, else processes).
func NewLauncher(ctx context.Context, name string) (Launcher, error) {
	switch name {
	case "processes":
		return processes{}, nil
	case "containers":
		if err := dockerPing(ctx); err != nil {
			return nil, fmt.Errorf("containers launcher: no Docker engine answers: %w", err)
		}
		return containers{}, nil
	case "", "auto":
		if dockerPing(ctx) == nil {
			return containers{}, nil
		}
		return processes{}, nil
	}
	return nil, fmt.Errorf("unknown launcher %q (want auto, processes or containers)", name)
}

// dockerPing asks the Docker engine named by DOCKER_HOST (default the local
// unix socket) for /_ping.
func dockerPing(ctx context.Context) error {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	u, err := url.Parse(host)
	if err != nil {
		return fmt.Errorf("DOCKER_HOST: %w", err)
	}
	tr := &http.Transport{}
	base := "http://docker"
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	case "tcp", "http":
		base = "http://" + u.Host
	default:
		return fmt.Errorf("DOCKER_HOST scheme %q not supported", u.Scheme)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "OK") {
		return fmt.Errorf("docker /_ping answered %s", resp.Status)
	}
	return nil
}

// freePorts finds n distinct free loopback TCP ports. They are released
// before use, so a race with another process is possible; services report a
// taken port as a start error.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// dialCheck succeeds once something accepts TCP connections on addr.
func dialCheck(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// httpCheck succeeds once GET u answers 200.
func httpCheck(u string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", u, resp.Status)
		}
		return nil
	}
}
