package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
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

// MosquittoSpec describes the MQTT broker to create: Mosquitto with its
// dynamic security plugin, whose state file (DynSecStateFile) is made on
// the first start with espmdm's account, AdminUser with AdminPassword
// (role MQTTAdminRole), and kept in Dir (in the container) from then on.
type MosquittoSpec struct {
	Port int
	Dir  string
	Log  io.Writer
	// AdminUser and AdminPassword are espmdm's account; AdminUser is made
	// of letters, digits, '_', '.' and '-'.
	AdminUser     string
	AdminPassword string
	// Anonymous lets clients without an account in (with what
	// MQTTAnonymousRole allows); otherwise their CONNECT is refused.
	Anonymous bool
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
	// PostgresPort, when not 0, keeps Keycloak's data in the database
	// "keycloak" of the stack's PostgreSQL on this port (made when
	// missing) instead of dev-file.
	PostgresPort int
	// Metrics enables /metrics (with HTTP histograms) on ManagementPort.
	Metrics bool
}

// Launcher creates the services of a stack.
type Launcher interface {
	Name() string
	NewPostgres(PostgresSpec) (Service, error)
	NewMosquitto(MosquittoSpec) (Service, error)
	NewKeycloak(KeycloakSpec) (Service, error)
	// NewS3 creates the S3-compatible server (S3Proxy).
	NewS3(S3Spec) (Service, error)
}

// NewLauncher returns the launcher called name: "processes", "containers",
// or "auto"/"" (containers when a Docker engine answers and has or can pull
// the images, else processes). The images are DefaultImages of the
// Keycloak version in $ESPMDM_KEYCLOAK_VERSION (default
// DefaultKeycloakVersion).
func NewLauncher(ctx context.Context, name string) (Launcher, error) {
	l, _, err := chooseLauncher(ctx, name, Images{}.withDefaults(envOr("ESPMDM_KEYCLOAK_VERSION", DefaultKeycloakVersion)))
	return l, err
}

// chooseLauncher returns the launcher called name and, when auto falls back
// to processes, one line saying why.
func chooseLauncher(ctx context.Context, name string, images Images) (Launcher, string, error) {
	switch name {
	case "processes":
		return processes{}, "", nil
	case "containers":
		eng := newDockerEngine()
		if err := eng.ping(ctx); err != nil {
			return nil, "", fmt.Errorf("containers launcher: no Docker engine answers at %s: %w", eng.host, err)
		}
		if err := eng.checkImages(ctx, images.list()); err != nil {
			return nil, "", fmt.Errorf("containers launcher: %w", err)
		}
		l, err := newContainers(ctx, eng, images)
		return l, "", err
	case "", "auto":
		eng := newDockerEngine()
		if err := eng.ping(ctx); err != nil {
			return processes{}, fmt.Sprintf("launcher auto: using processes, no Docker engine answers at %s", eng.host), nil
		}
		if err := eng.checkImages(ctx, images.list()); err != nil {
			return processes{}, fmt.Sprintf("launcher auto: using processes, the Docker engine at %s answers but %v", eng.host, err), nil
		}
		l, err := newContainers(ctx, eng, images)
		return l, "", err
	}
	return nil, "", fmt.Errorf("unknown launcher %q (want auto, processes or containers)", name)
}

// dockerEngine is the little of the Docker Engine API the launcher choice
// and the clean-up need, over DOCKER_HOST (default the local unix socket).
type dockerEngine struct {
	host   string
	base   string
	client *http.Client
	err    error // DOCKER_HOST unusable
}

func newDockerEngine() *dockerEngine {
	host := os.Getenv("DOCKER_HOST")
	if host == "" {
		host = "unix:///var/run/docker.sock"
	}
	e := &dockerEngine{host: host, base: "http://docker"}
	u, err := url.Parse(host)
	if err != nil {
		e.err = fmt.Errorf("DOCKER_HOST: %w", err)
		return e
	}
	// A few calls per stack: no idle connections (and goroutines) kept.
	tr := &http.Transport{DisableKeepAlives: true}
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	case "tcp", "http":
		e.base = "http://" + u.Host
	default:
		e.err = fmt.Errorf("DOCKER_HOST scheme %q not supported", u.Scheme)
	}
	e.client = &http.Client{Transport: tr}
	return e
}

// call sends one request and returns the status and (bounded) body.
func (e *dockerEngine) call(ctx context.Context, method, path string, timeout time.Duration) (int, []byte, error) {
	if e.err != nil {
		return 0, nil, e.err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, e.base+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

// ping asks the engine for /_ping.
func (e *dockerEngine) ping(ctx context.Context) error {
	code, body, err := e.call(ctx, http.MethodGet, "/_ping", 2*time.Second)
	if err != nil {
		return err
	}
	if code != http.StatusOK || !strings.HasPrefix(string(body), "OK") {
		return fmt.Errorf("docker /_ping answered %d", code)
	}
	return nil
}

// engineMessage is the message of an Engine API error body.
func engineMessage(code int, body []byte) string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &m) == nil && m.Message != "" {
		return m.Message
	}
	return http.StatusText(code)
}

// imagePresent reports whether the engine has image locally.
func (e *dockerEngine) imagePresent(ctx context.Context, image string) (bool, error) {
	code, body, err := e.call(ctx, http.MethodGet, "/images/"+image+"/json", 10*time.Second)
	switch {
	case err != nil:
		return false, err
	case code == http.StatusOK:
		return true, nil
	case code == http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("inspect image %s: %s", image, engineMessage(code, body))
}

// pullable asks the engine whether the registry of image serves it,
// without pulling it.
func (e *dockerEngine) pullable(ctx context.Context, image string) error {
	code, body, err := e.call(ctx, http.MethodGet, "/distribution/"+image+"/json", 20*time.Second)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return errors.New(engineMessage(code, body))
	}
	return nil
}

// checkImages succeeds when every image is present or pullable; the error
// names each one that is neither.
// The images are checked at once: asking a registry that does not answer
// takes up to its timeout.
func (e *dockerEngine) checkImages(ctx context.Context, images []string) error {
	problems := make([]string, len(images))
	errs := make([]error, len(images))
	var wg sync.WaitGroup
	for i, im := range images {
		wg.Go(func() {
			ok, err := e.imagePresent(ctx, im)
			if err != nil || ok {
				errs[i] = err
				return
			}
			if err := e.pullable(ctx, im); err != nil {
				problems[i] = fmt.Sprintf("%s (%v)", im, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var missing []string
	for _, p := range problems {
		if p != "" {
			missing = append(missing, p)
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("image %s is not on the engine and cannot be pulled; build local stand-ins with `make images` (see README, Deploy)", missing[0])
	}
	return fmt.Errorf("images %s are not on the engine and cannot be pulled; build local stand-ins with `make images` (see README, Deploy)", strings.Join(missing, ", "))
}

// containerSummary is one entry of GET /containers/json.
type containerSummary struct {
	ID     string            `json:"Id"`
	Names  []string          `json:"Names"`
	Labels map[string]string `json:"Labels"`
}

// containersLabelled lists every container (running or not) carrying label.
func (e *dockerEngine) containersLabelled(ctx context.Context, label string) ([]containerSummary, error) {
	filters, _ := json.Marshal(map[string][]string{"label": {label}})
	code, body, err := e.call(ctx, http.MethodGet, "/containers/json?all=1&filters="+url.QueryEscape(string(filters)), 10*time.Second)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("list containers: %s", engineMessage(code, body))
	}
	var list []containerSummary
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return list, nil
}

// removeContainer force-removes a container and its anonymous volumes.
func (e *dockerEngine) removeContainer(ctx context.Context, id string) error {
	code, body, err := e.call(ctx, http.MethodDelete, "/containers/"+url.PathEscape(id)+"?force=1&v=1", 30*time.Second)
	if err != nil {
		return err
	}
	if code != http.StatusNoContent && code != http.StatusNotFound {
		return fmt.Errorf("remove container %s: %s", id, engineMessage(code, body))
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
