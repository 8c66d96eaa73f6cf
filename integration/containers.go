package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/uptrace/bun/driver/pgdriver"
)

// The official images the containers launcher runs unless told otherwise.
const (
	DefaultPostgresImage  = "postgres:15"
	DefaultMosquittoImage = "eclipse-mosquitto:2"
	// KeycloakImageRepository is tagged with the Keycloak version.
	KeycloakImageRepository = "quay.io/keycloak/keycloak"
)

// Environment variables naming other images (e.g. the local stand-ins
// that `make images` builds, espmdm-local/...).
const (
	EnvPostgresImage  = "ESPMDM_POSTGRES_IMAGE"
	EnvKeycloakImage  = "ESPMDM_KEYCLOAK_IMAGE"
	EnvMosquittoImage = "ESPMDM_MOSQUITTO_IMAGE"
)

// Images names the container images of the containers launcher. They must
// offer the official images' interface: environment variables, commands,
// ports and paths.
type Images struct {
	Postgres  string
	Keycloak  string
	Mosquitto string
}

// DefaultImages returns the images named by $ESPMDM_POSTGRES_IMAGE,
// $ESPMDM_KEYCLOAK_IMAGE and $ESPMDM_MOSQUITTO_IMAGE, else the official ones
// (Keycloak at keycloakVersion).
func DefaultImages(keycloakVersion string) Images { return Images{}.withDefaults(keycloakVersion) }

// withDefaults fills the empty names from the environment, else with the
// official images.
func (im Images) withDefaults(keycloakVersion string) Images {
	if im.Postgres == "" {
		im.Postgres = envOr(EnvPostgresImage, DefaultPostgresImage)
	}
	if im.Keycloak == "" {
		im.Keycloak = envOr(EnvKeycloakImage, KeycloakImageRepository+":"+keycloakVersion)
	}
	if im.Mosquitto == "" {
		im.Mosquitto = envOr(EnvMosquittoImage, DefaultMosquittoImage)
	}
	return im
}

func (im Images) list() []string { return []string{im.Postgres, im.Mosquitto, im.Keycloak} }

// ryukImage is the reaper image testcontainers-go (v0.45) runs unless
// TESTCONTAINERS_RYUK_DISABLED is set.
const ryukImage = "testcontainers/ryuk:0.14.0"

// Labels on every container of the launcher, so that the containers of a
// run that died (SIGKILL) are found and removed by the next one also
// without Ryuk, testcontainers' reaper (whose image may not be at hand).
const (
	labelStack = "org.espmdm.stack" // the stack's id
	labelOwner = "org.espmdm.owner" // host:pid of the process that started it
)

// containers runs the services with testcontainers-go. Host ports are bound
// explicitly (to the ports the stack picked, on 127.0.0.1) so a stopped and
// restarted container keeps its URL, and Keycloak's --hostname matches it.
type containers struct {
	images  Images
	stackID string
	owner   string
}

func (containers) Name() string { return "containers" }

// newContainers prepares the launcher: Ryuk is turned off when its image
// is not on the engine (the stack removes its containers itself), and the
// containers of earlier runs whose process is gone are removed.
func newContainers(ctx context.Context, eng *dockerEngine, images Images) (containers, error) {
	if _, set := os.LookupEnv("TESTCONTAINERS_RYUK_DISABLED"); !set {
		if ok, err := eng.imagePresent(ctx, ryukImage); err != nil || !ok {
			// Read once by testcontainers, at its first use.
			_ = os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
		}
	}
	// testcontainers' own chatter (banner, pulls) says nothing the stack's
	// errors and service logs do not.
	tclog.SetDefault(tclog.NewNoopLogger())
	host, _ := os.Hostname()
	if err := removeOrphans(ctx, eng, host); err != nil {
		return containers{}, fmt.Errorf("containers launcher: remove the containers of earlier runs: %w", err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return containers{
		images:  images,
		stackID: hex.EncodeToString(b),
		owner:   host + ":" + strconv.Itoa(os.Getpid()),
	}, nil
}

// removeOrphans removes the stack containers started on this host by
// processes that no longer exist.
func removeOrphans(ctx context.Context, eng *dockerEngine, host string) error {
	list, err := eng.containersLabelled(ctx, labelStack)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range list {
		h, p, ok := strings.Cut(c.Labels[labelOwner], ":")
		pid, perr := strconv.Atoi(p)
		if !ok || perr != nil || h != host || pid <= 0 || processAlive(pid) {
			continue
		}
		if err := eng.removeContainer(ctx, c.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

type containerService struct {
	name  ServiceName
	req   testcontainers.ContainerRequest
	ready func(context.Context) error
	// readyTimeout bounds the wait for ready after a start.
	readyTimeout time.Duration

	logFile io.Closer

	mu sync.Mutex
	c  testcontainers.Container
	up bool
}

func (s *containerService) Name() ServiceName { return s.name }

func (s *containerService) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.up {
		return nil
	}
	// The log producer lives as long as the context given here: the
	// container's, not the caller's.
	lctx := context.WithoutCancel(ctx)
	if s.c == nil {
		c, err := testcontainers.GenericContainer(lctx, testcontainers.GenericContainerRequest{
			ContainerRequest: s.req, Started: true, Logger: tclog.NewNoopLogger(),
		})
		if err != nil {
			if c != nil {
				_ = c.Terminate(context.Background())
			}
			return fmt.Errorf("run image %s: %w", s.req.Image, err)
		}
		s.c = c
	} else if err := s.c.Start(lctx); err != nil {
		return fmt.Errorf("restart container of %s: %w", s.req.Image, err)
	}
	s.up = true
	var exited error
	err := waitFor(ctx, s.readyTimeout, func(ctx context.Context) error {
		st, err := s.c.State(ctx)
		if err != nil {
			return err
		}
		if !st.Running {
			exited = fmt.Errorf("container %w (status %s, exit code %d)", errExited, st.Status, st.ExitCode)
			return nil // stop waiting
		}
		return s.ready(ctx)
	})
	if err == nil {
		err = exited
	}
	if err != nil {
		return fmt.Errorf("%w\n--- last lines of the %s container (image %s) ---\n%s", err, s.name, s.req.Image, s.logTail(3000))
	}
	return nil
}

// logTail returns the last n bytes of the container's output.
func (s *containerService) logTail(n int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := s.c.Logs(ctx)
	if err != nil {
		return "(no logs: " + err.Error() + ")"
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (s *containerService) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.up {
		return nil
	}
	// Time for a clean shutdown before Docker kills: Keycloak's dev-file
	// database loses its last commits to a SIGKILL (the processes
	// launcher waits 30 s).
	timeout := time.Minute
	s.up = false
	return s.c.Stop(ctx, &timeout)
}

// terminate removes the container and its volumes; the stack calls Stop
// first.
func (s *containerService) terminate(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return nil
	}
	err := s.c.Terminate(ctx)
	s.c, s.up = nil, false
	if s.logFile != nil {
		_ = s.logFile.Close()
	}
	return err
}

// bindPorts publishes each container port on 127.0.0.1 at its host port.
func bindPorts(ports map[string]int) func(*container.HostConfig) {
	return func(hc *container.HostConfig) {
		hc.PortBindings = network.PortMap{}
		for cp, hp := range ports {
			hc.PortBindings[network.MustParsePort(cp)] = []network.PortBinding{{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(hp)}}
		}
	}
}

// logTo is a log consumer writing a container's output to a file in the
// service's directory and to the stack's log.
type logTo struct {
	mu  sync.Mutex
	out io.Writer
}

func (l *logTo) Accept(entry testcontainers.Log) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.out.Write(entry.Content)
}

// request is the part of every service's container request the launcher
// fixes: name, labels, published ports, output.
func (l containers) request(name ServiceName, dir string, log io.Writer, image string, ports map[string]int) (testcontainers.ContainerRequest, io.Closer, error) {
	if log == nil {
		log = io.Discard
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return testcontainers.ContainerRequest{}, nil, err
	}
	// Open for the container's life, closed when it is removed.
	f, err := os.OpenFile(filepath.Join(dir, string(name)+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return testcontainers.ContainerRequest{}, nil, err
	}
	exposed := make([]string, 0, len(ports))
	for p := range ports {
		exposed = append(exposed, p)
	}
	return testcontainers.ContainerRequest{
		Image:              image,
		Name:               "espmdm-" + l.stackID + "-" + string(name),
		Labels:             map[string]string{labelStack: l.stackID, labelOwner: l.owner},
		ExposedPorts:       exposed,
		HostConfigModifier: bindPorts(ports),
		LogConsumerCfg:     &testcontainers.LogConsumerConfig{Consumers: []testcontainers.LogConsumer{&logTo{out: io.MultiWriter(f, log)}}},
	}, f, nil
}

func (l containers) NewPostgres(spec PostgresSpec) (Service, error) {
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", spec.Port)
	req, logFile, err := l.request(Postgres, spec.Dir, spec.Log, l.images.Postgres, map[string]int{"5432/tcp": spec.Port})
	if err != nil {
		return nil, err
	}
	req.Env = map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust"}
	// The same throwaway settings as the processes launcher.
	req.Cmd = []string{"postgres", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"}
	return &terminatingService{&containerService{
		name: Postgres, req: req, logFile: logFile, readyTimeout: 2 * time.Minute,
		ready: func(ctx context.Context) error {
			db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
			defer db.Close()
			return db.PingContext(ctx)
		},
	}}, nil
}

func (l containers) NewMosquitto(spec MosquittoSpec) (Service, error) {
	// The image's own start script (the official image's entrypoint gives
	// /mosquitto to the mosquitto user first) runs the script that makes
	// the dynamic security plugin's state file on the first start; the
	// file lives as long as the container, so a stop and start of the
	// service keeps the accounts.
	const (
		confPath   = "/mosquitto/config/mosquitto.conf"
		scriptPath = "/mosquitto/config/espmdm-start.sh"
		statePath  = "/mosquitto/data/" + DynSecStateFile
	)
	conf := mosquittoConf("1883 0.0.0.0", spec.Anonymous, DynSecPluginContainerPath, statePath, "")
	req, logFile, err := l.request(Mosquitto, spec.Dir, spec.Log, l.images.Mosquitto, map[string]int{"1883/tcp": spec.Port})
	if err != nil {
		return nil, err
	}
	req.Files = []testcontainers.ContainerFile{
		{Reader: bytes.NewReader([]byte(conf)), ContainerFilePath: confPath, FileMode: 0o644},
		{Reader: bytes.NewReader(mosquittoStart), ContainerFilePath: scriptPath, FileMode: 0o755},
	}
	req.Cmd = []string{"/bin/sh", scriptPath, statePath, confPath}
	req.Env = map[string]string{"MQTT_ADMIN_USER": spec.AdminUser, "MQTT_ADMIN_PASSWORD": spec.AdminPassword}
	return &terminatingService{&containerService{
		name: Mosquitto, req: req, logFile: logFile, readyTimeout: time.Minute,
		// Docker's port proxy accepts connections before the broker
		// listens: only an MQTT answer tells it is up.
		ready: mqttCheck(fmt.Sprintf("127.0.0.1:%d", spec.Port), spec.AdminUser, spec.AdminPassword),
	}}, nil
}

func (l containers) NewKeycloak(spec KeycloakSpec) (Service, error) {
	if spec.PostgresPort != 0 || spec.Metrics {
		return nil, errors.New("containers launcher: Keycloak on PostgreSQL and Keycloak metrics need the processes launcher")
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", spec.Port)
	req, logFile, err := l.request(Keycloak, spec.Dir, spec.Log, l.images.Keycloak,
		map[string]int{"8080/tcp": spec.Port, "9000/tcp": spec.ManagementPort})
	if err != nil {
		return nil, err
	}
	req.Env = map[string]string{"JAVA_OPTS_KC_HEAP": "-Xms64m -Xmx512m"}
	for k, v := range spec.Env {
		req.Env[k] = v
	}
	// The processes launcher's options; the container's own data
	// directory (dev-file) survives a stop and start of the container.
	req.Cmd = []string{"start-dev", "--http-port=8080", "--hostname=" + base,
		"--health-enabled=true", "--db=dev-file", "--features=client-secret-rotation", "--import-realm"}
	req.Files = []testcontainers.ContainerFile{{
		Reader:            bytes.NewReader(spec.RealmJSON),
		ContainerFilePath: "/opt/keycloak/data/import/" + spec.Realm + "-realm.json", FileMode: 0o644,
	}}
	health := httpCheck(fmt.Sprintf("http://127.0.0.1:%d/health/ready", spec.ManagementPort))
	realm := httpCheck(base + "/realms/" + spec.Realm + "/.well-known/openid-configuration")
	return &terminatingService{&containerService{
		name: Keycloak, req: req, logFile: logFile, readyTimeout: 4 * time.Minute,
		ready: func(ctx context.Context) error {
			if err := health(ctx); err != nil {
				return err
			}
			return realm(ctx)
		},
	}}, nil
}

// terminatingService removes its container when the stack stops for good;
// StopService/StartService keep it.
type terminatingService struct{ *containerService }

// Terminate is called by Stack.Stop through the terminator interface.
func (t *terminatingService) Terminate(ctx context.Context) error { return t.terminate(ctx) }

// terminator is implemented by services that need more than Stop at the
// end of a stack (containers are removed, not just stopped).
type terminator interface{ Terminate(context.Context) error }

// NewS3 runs S3Proxy as a local process, as the processes launcher does:
// there is no S3Proxy image among the stack's images (nor a local
// stand-in) yet, and the Java it needs is on the host for Keycloak's
// distribution anyway (make deps). It listens on loopback like the
// containers' published ports.
func (l containers) NewS3(spec S3Spec) (Service, error) { return processes{}.NewS3(spec) }
