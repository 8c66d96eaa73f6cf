package integration

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
	"github.com/uptrace/bun/driver/pgdriver"
)

// Official images the containers launcher runs.
const (
	PostgresImage  = "postgres:15"
	MosquittoImage = "eclipse-mosquitto:2"
	KeycloakImage  = "quay.io/keycloak/keycloak" // tagged with the Keycloak version
)

// containers runs the services with testcontainers-go. Host ports are bound
// explicitly (to the ports the stack picked) so a stopped and restarted
// container keeps its URL, and Keycloak's --hostname matches it.
type containers struct{}

func (containers) Name() string { return "containers" }

type containerService struct {
	name  ServiceName
	req   testcontainers.ContainerRequest
	ready func(context.Context) error

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
	if s.c == nil {
		c, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{ContainerRequest: s.req, Started: true})
		if err != nil {
			if c != nil {
				_ = c.Terminate(context.Background())
			}
			return err
		}
		s.c = c
	} else if err := s.c.Start(ctx); err != nil {
		return err
	}
	s.up = true
	return waitFor(ctx, 3*time.Minute, s.ready)
}

func (s *containerService) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.up {
		return nil
	}
	timeout := 20 * time.Second
	s.up = false
	return s.c.Stop(ctx, &timeout)
}

// terminate removes the container; the stack calls Stop first.
func (s *containerService) terminate(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		return nil
	}
	err := s.c.Terminate(ctx)
	s.c, s.up = nil, false
	return err
}

// bindPort publishes containerPort on 127.0.0.1:hostPort.
func bindPort(containerPort string, hostPort int) func(*container.HostConfig) {
	return func(hc *container.HostConfig) {
		hc.PortBindings = network.PortMap{
			network.MustParsePort(containerPort): {{HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: strconv.Itoa(hostPort)}},
		}
	}
}

func (containers) NewPostgres(spec PostgresSpec) (Service, error) {
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", spec.Port)
	return &terminatingService{&containerService{
		name: Postgres,
		req: testcontainers.ContainerRequest{
			Image:              PostgresImage,
			ExposedPorts:       []string{"5432/tcp"},
			Env:                map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust"},
			Cmd:                []string{"postgres", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=200"},
			HostConfigModifier: bindPort("5432/tcp", spec.Port),
			WaitingFor:         wait.ForListeningPort("5432/tcp").WithStartupTimeout(2 * time.Minute),
		},
		ready: func(ctx context.Context) error {
			db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
			defer db.Close()
			return db.PingContext(ctx)
		},
	}}, nil
}

func (containers) NewMosquitto(spec MosquittoSpec) (Service, error) {
	conf := "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\nlog_dest stdout\n"
	return &terminatingService{&containerService{
		name: Mosquitto,
		req: testcontainers.ContainerRequest{
			Image:        MosquittoImage,
			ExposedPorts: []string{"1883/tcp"},
			Files: []testcontainers.ContainerFile{{
				Reader: bytes.NewReader([]byte(conf)), ContainerFilePath: "/mosquitto/config/mosquitto.conf", FileMode: 0o644,
			}},
			HostConfigModifier: bindPort("1883/tcp", spec.Port),
			WaitingFor:         wait.ForListeningPort("1883/tcp"),
		},
		ready: dialCheck(fmt.Sprintf("127.0.0.1:%d", spec.Port)),
	}}, nil
}

func (containers) NewKeycloak(spec KeycloakSpec) (Service, error) {
	base := fmt.Sprintf("http://127.0.0.1:%d", spec.Port)
	env := map[string]string{"JAVA_OPTS_KC_HEAP": "-Xms64m -Xmx512m"}
	for k, v := range spec.Env {
		env[k] = v
	}
	return &terminatingService{&containerService{
		name: Keycloak,
		req: testcontainers.ContainerRequest{
			Image:        KeycloakImage + ":" + spec.Version,
			ExposedPorts: []string{"8080/tcp"},
			Env:          env,
			Cmd: []string{"start-dev", "--http-port=8080", "--hostname=" + base,
				"--health-enabled=true", "--db=dev-file", "--features=client-secret-rotation", "--import-realm"},
			Files: []testcontainers.ContainerFile{{
				Reader:            bytes.NewReader(spec.RealmJSON),
				ContainerFilePath: "/opt/keycloak/data/import/" + spec.Realm + "-realm.json", FileMode: 0o644,
			}},
			HostConfigModifier: bindPort("8080/tcp", spec.Port),
			WaitingFor:         wait.ForListeningPort("8080/tcp").WithStartupTimeout(3 * time.Minute),
		},
		ready: httpCheck(base + "/realms/" + spec.Realm + "/.well-known/openid-configuration"),
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
