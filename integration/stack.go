package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServiceName names one service of the stack.
type ServiceName string

// The services of a stack.
const (
	Postgres  ServiceName = "postgres"
	Keycloak  ServiceName = "keycloak"
	Mosquitto ServiceName = "mosquitto"
	// S3 is the S3-compatible object store (S3Proxy), started only with
	// Options.S3.
	S3 ServiceName = "s3"
)

// Services lists the services every stack runs, in start order.
var Services = []ServiceName{Postgres, Mosquitto, Keycloak}

// allServices is Services and the optional ones, in start order.
var allServices = []ServiceName{Postgres, Mosquitto, Keycloak, S3}

// Fixed identities of the bootstrapped realm.
const (
	DefaultRealm          = "iot"
	AdminClientID         = "iotsupport-admin"
	OperatorClientID      = "espmdm-operator"
	ViewerClientID        = "espmdm-viewer"
	PipelineClientID      = "espmdm-pipeline"
	DefaultDeviceAudience = "espmdm-iot"
	KeycloakAdminUser     = "admin"
)

// Options configure Start. The zero value starts everything with the "auto"
// launcher.
type Options struct {
	// Launcher is "auto" (default), "processes" or "containers". Auto
	// picks containers when a Docker engine answers and has (or can pull)
	// the images, else processes and says why in one line (to Log, or
	// stderr when Log is nil).
	Launcher string
	// Images of the containers launcher; empty names default to
	// DefaultImages (the official images unless $ESPMDM_*_IMAGE name
	// others).
	Images Images
	// KeycloakVersion defaults to DefaultKeycloakVersion (or
	// $ESPMDM_KEYCLOAK_VERSION).
	KeycloakVersion string
	// CacheDir keeps the Keycloak distribution between runs; default
	// $ESPMDM_CACHE_DIR or the user cache dir + "/espmdm".
	CacheDir string
	// Log receives the services' output; nil discards it (it is also kept
	// in each service's directory and named in start errors).
	Log io.Writer
	// DataDir, when set, keeps the stack in this directory across runs:
	// PostgreSQL's data, the Keycloak realm (its H2 database), and the
	// stack's ports and secrets (DataDir/stack.env), so that a second
	// Start with the same DataDir comes back with the same URLs,
	// credentials and data. Stop leaves the directory. Processes launcher
	// only.
	DataDir string
	// RotationGrace is the rotated-expiration-period of the realm's
	// secret-rotation profile (how long an old secret stays valid after a
	// grace-mode generation); default DefaultRotationGrace. Whole seconds.
	RotationGrace time.Duration
	// S3 also starts an S3-compatible server (S3Proxy on the filesystem,
	// a local Java process with either launcher) with one bucket, for the
	// S3 blob store. Stacks that do not need it do not pay its start-up.
	S3 bool
	// S3ProxyVersion defaults to DefaultS3ProxyVersion (or
	// $ESPMDM_S3PROXY_VERSION).
	S3ProxyVersion string
	// MQTTAnonymous says whether the broker lets clients in without an
	// account (SPEC §19); nil means $ESPMDM_STACK_MQTT_ANONYMOUS, else
	// DefaultMQTTAnonymous. Either way espmdm's own account
	// (Stack.MQTTAdminUser) and the device accounts it makes work.
	MQTTAnonymous *bool
	// KeycloakOnPostgres keeps Keycloak's data in a database "keycloak" of
	// the stack's PostgreSQL, as in production, instead of its dev-file
	// store (H2), which does not hold tens of thousands of clients well.
	// Processes launcher only (make bench-identities).
	KeycloakOnPostgres bool
	// KeycloakMetrics enables Keycloak's /metrics on its management port
	// (Stack.KeycloakMetricsURL), with HTTP request histograms.
	KeycloakMetrics bool
}

// DefaultRotationGrace is the stack's rotated-secret lifetime, espmdm's
// ROTATION_GRACE default.
const DefaultRotationGrace = 7 * 24 * time.Hour

// Stack is a running set of services. Its fields are fixed for its lifetime:
// stopping and starting a single service keeps its port.
type Stack struct {
	Launcher string

	DatabaseURL string // postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable

	KeycloakURL string // http://127.0.0.1:PORT
	// KeycloakMetricsURL is Keycloak's /metrics (Options.KeycloakMetrics); "" without.
	KeycloakMetricsURL   string
	Realm                string
	IssuerURL            string
	TokenURL             string
	AdminClientID        string
	AdminClientSecret    string
	OperatorClientID     string
	OperatorClientSecret string
	ViewerClientID       string
	ViewerClientSecret   string
	// PipelineClientID holds only the pipeline role (SPEC §18).
	PipelineClientID      string
	PipelineClientSecret  string
	DeviceAudience        string
	KeycloakAdminUser     string // master realm console user
	KeycloakAdminPassword string

	// MQTTURL is the broker without credentials (mqtt://127.0.0.1:PORT):
	// what devices are given. espmdm connects with MQTTAdminURL.
	MQTTURL string
	// MQTTAdminUser and MQTTAdminPassword are espmdm's own broker account
	// (the dynamic security plugin's admin, MQTTAdminRole: it manages the
	// accounts and is the only one that may publish on iotsupport/#).
	MQTTAdminUser     string
	MQTTAdminPassword string
	// MQTTAnonymous tells whether the broker lets clients in without an
	// account (Options.MQTTAnonymous).
	MQTTAnonymous bool

	// The S3-compatible server (Options.S3), empty without one: endpoint
	// http://127.0.0.1:PORT, path-style addressing, one bucket.
	S3Endpoint        string
	S3Region          string
	S3Bucket          string
	S3AccessKeyID     string
	S3SecretAccessKey string

	// RotationGrace is the realm's rotated-secret lifetime (its
	// secret-rotation client policy covers every confidential client, the
	// device clients among them).
	RotationGrace time.Duration

	dir      string
	services map[ServiceName]Service
	attached bool   // loaded from an env file: not ours to stop
	keep     bool   // a DataDir: Stop leaves the directory
	control  string // control socket path (owner: serving; attached: to call)
	stopOnce sync.Once
	stopErr  error
}

// Start launches every service and returns once all are ready. On error
// everything already started is stopped again.
func Start(ctx context.Context, opts Options) (st *Stack, err error) {
	version := opts.KeycloakVersion
	if version == "" {
		version = envOr("ESPMDM_KEYCLOAK_VERSION", DefaultKeycloakVersion)
	}
	anonymous, err := anonymousSetting(opts.MQTTAnonymous)
	if err != nil {
		return nil, err
	}
	launcher, note, err := chooseLauncher(ctx, opts.Launcher, opts.Images.withDefaults(version))
	if err != nil {
		return nil, err
	}
	if note != "" {
		out := opts.Log
		if out == nil {
			out = os.Stderr
		}
		fmt.Fprintln(out, "espmdm stack:", note)
	}
	var dir string
	if opts.DataDir != "" {
		if launcher.Name() != "processes" {
			return nil, fmt.Errorf("a data directory needs the processes launcher, not %s", launcher.Name())
		}
		if dir, err = filepath.Abs(opts.DataDir); err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err == nil {
			// Services may run as other users (postgres drops root), and
			// every directory above DataDir must let them through too.
			err = os.Chmod(dir, 0o755)
		}
	} else {
		dir, err = os.MkdirTemp("", "espmdm-stack-")
	}
	if err != nil {
		return nil, fmt.Errorf("stack directory: %w", err)
	}
	// Services may run as other users (postgres drops root): let them in.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	st = &Stack{
		Launcher:              launcher.Name(),
		Realm:                 DefaultRealm,
		AdminClientID:         AdminClientID,
		AdminClientSecret:     randomSecret(),
		OperatorClientID:      OperatorClientID,
		OperatorClientSecret:  randomSecret(),
		ViewerClientID:        ViewerClientID,
		ViewerClientSecret:    randomSecret(),
		PipelineClientID:      PipelineClientID,
		PipelineClientSecret:  randomSecret(),
		DeviceAudience:        DefaultDeviceAudience,
		RotationGrace:         opts.RotationGrace.Truncate(time.Second),
		KeycloakAdminUser:     KeycloakAdminUser,
		KeycloakAdminPassword: randomSecret(),
		MQTTAdminUser:         DefaultMQTTAdminUser,
		MQTTAdminPassword:     randomSecret(),
		MQTTAnonymous:         anonymous,
		dir:                   dir,
		services:              map[ServiceName]Service{},
	}
	if st.RotationGrace <= 0 {
		st.RotationGrace = DefaultRotationGrace
	}
	defer func() {
		if err != nil {
			_ = st.Stop(context.Background())
			st = nil
		}
	}()

	if opts.S3 {
		st.S3Region, st.S3Bucket = DefaultS3Region, DefaultS3Bucket
		st.S3AccessKeyID, st.S3SecretAccessKey = DefaultS3AccessKey, randomSecret()
	}
	var ports []int
	if opts.DataDir != "" {
		st.keep = true
		ports, err = st.persisted(filepath.Join(dir, "stack.env"), opts.S3)
	} else {
		ports, err = freePorts(5)
	}
	if err != nil {
		return st, err
	}
	pgPort, mqttPort, kcPort, kcMgmtPort := ports[0], ports[1], ports[2], ports[3]
	st.DatabaseURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pgPort)
	st.MQTTURL = fmt.Sprintf("mqtt://127.0.0.1:%d", mqttPort)
	st.KeycloakURL = fmt.Sprintf("http://127.0.0.1:%d", kcPort)
	st.IssuerURL = st.KeycloakURL + "/realms/" + st.Realm
	st.TokenURL = st.IssuerURL + "/protocol/openid-connect/token"

	logw := opts.Log
	if logw == nil {
		logw = io.Discard
	}
	cacheDir := opts.CacheDir
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}

	pg, err := launcher.NewPostgres(PostgresSpec{Port: pgPort, Dir: filepath.Join(dir, "postgres"), Log: logw})
	if err != nil {
		return st, err
	}
	mq, err := launcher.NewMosquitto(MosquittoSpec{Port: mqttPort, Dir: filepath.Join(dir, "mosquitto"), Log: logw,
		AdminUser: st.MQTTAdminUser, AdminPassword: st.MQTTAdminPassword, Anonymous: anonymous})
	if err != nil {
		return st, err
	}
	kcSpec := KeycloakSpec{
		Port: kcPort, ManagementPort: kcMgmtPort, Dir: filepath.Join(dir, "keycloak"),
		Version: version, CacheDir: cacheDir, Realm: st.Realm,
		RealmJSON: realmJSON, Env: st.realmEnv(), Log: logw,
		Metrics: opts.KeycloakMetrics,
	}
	if opts.KeycloakOnPostgres {
		kcSpec.PostgresPort = pgPort
	}
	if opts.KeycloakMetrics {
		st.KeycloakMetricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", kcMgmtPort)
	}
	kc, err := launcher.NewKeycloak(kcSpec)
	if err != nil {
		return st, err
	}
	st.services[Postgres], st.services[Mosquitto], st.services[Keycloak] = pg, mq, kc
	if opts.S3 {
		version := opts.S3ProxyVersion
		if version == "" {
			version = envOr("ESPMDM_S3PROXY_VERSION", DefaultS3ProxyVersion)
		}
		st.S3Endpoint = fmt.Sprintf("http://127.0.0.1:%d", ports[4])
		s3, err := launcher.NewS3(S3Spec{
			Port: ports[4], Dir: filepath.Join(dir, "s3"), Version: version, CacheDir: cacheDir,
			Bucket: st.S3Bucket, AccessKeyID: st.S3AccessKeyID, SecretAccessKey: st.S3SecretAccessKey, Log: logw,
		})
		if err != nil {
			return st, err
		}
		st.services[S3] = s3
	}

	// Start them all at once: Keycloak dominates, the others hide behind it.
	errs := make(chan error, len(st.services))
	for _, svc := range st.services {
		go func() {
			if err := svc.Start(ctx); err != nil {
				errs <- fmt.Errorf("start %s: %w", svc.Name(), err)
				return
			}
			errs <- nil
		}()
	}
	var all []error
	for range st.services {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return st, errors.Join(all...)
}

// realmEnv is the environment the realm import's placeholders resolve from.
func (s *Stack) realmEnv() map[string]string {
	return map[string]string{
		"ESPMDM_REALM":                  s.Realm,
		"ESPMDM_ADMIN_CLIENT_ID":        s.AdminClientID,
		"ESPMDM_ADMIN_CLIENT_SECRET":    s.AdminClientSecret,
		"ESPMDM_OPERATOR_CLIENT_ID":     s.OperatorClientID,
		"ESPMDM_OPERATOR_CLIENT_SECRET": s.OperatorClientSecret,
		"ESPMDM_VIEWER_CLIENT_ID":       s.ViewerClientID,
		"ESPMDM_VIEWER_CLIENT_SECRET":   s.ViewerClientSecret,
		"ESPMDM_PIPELINE_CLIENT_ID":     s.PipelineClientID,
		"ESPMDM_PIPELINE_CLIENT_SECRET": s.PipelineClientSecret,
		"ESPMDM_ROTATION_GRACE_SECONDS": strconv.FormatInt(int64(s.RotationGrace/time.Second), 10),
		"KC_BOOTSTRAP_ADMIN_USERNAME":   s.KeycloakAdminUser,
		"KC_BOOTSTRAP_ADMIN_PASSWORD":   s.KeycloakAdminPassword,
	}
}

// Dir is the stack's temporary directory (service data and logs).
func (s *Stack) Dir() string { return s.dir }

// StopService stops one service, keeping its data and port, so a test can
// observe how espmdm behaves while it is down.
func (s *Stack) StopService(ctx context.Context, name ServiceName) error {
	if s.attached {
		return s.remoteControl(ctx, name, "stop")
	}
	svc, err := s.service(name)
	if err != nil {
		return err
	}
	return svc.Stop(ctx)
}

// StartService starts a service stopped with StopService and waits until it
// is ready again.
func (s *Stack) StartService(ctx context.Context, name ServiceName) error {
	if s.attached {
		return s.remoteControl(ctx, name, "start")
	}
	svc, err := s.service(name)
	if err != nil {
		return err
	}
	return svc.Start(ctx)
}

func (s *Stack) service(name ServiceName) (Service, error) {
	svc, ok := s.services[name]
	if !ok {
		return nil, fmt.Errorf("unknown service %q", name)
	}
	return svc, nil
}

// Stop stops every service and removes the stack's directory. It is safe to
// call more than once; an attached stack is left running.
func (s *Stack) Stop(ctx context.Context) error {
	if s == nil || s.attached {
		return nil
	}
	s.stopOnce.Do(func() {
		var errs []error
		for i := len(allServices) - 1; i >= 0; i-- {
			name := allServices[i]
			if svc, ok := s.services[name]; ok {
				if err := svc.Stop(ctx); err != nil {
					errs = append(errs, fmt.Errorf("stop %s: %w", name, err))
				}
				if t, ok := svc.(terminator); ok {
					if err := t.Terminate(ctx); err != nil {
						errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
					}
				}
			}
		}
		if s.dir != "" && !s.keep {
			if err := os.RemoveAll(s.dir); err != nil {
				errs = append(errs, err)
			}
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// persisted reads the ports and secrets a data directory's earlier run
// wrote to path, or picks and writes them on its first run, and returns
// the ports (PostgreSQL, Mosquitto, Keycloak, Keycloak management, S3).
// A stack with S3 on a directory whose earlier runs had none picks the S3
// port and secret and adds them to the file; so does a directory whose
// earlier runs had no broker account for espmdm (before the broker's
// dynamic security plugin) with that account's password.
func (s *Stack) persisted(path string, withS3 bool) ([]int, error) {
	secrets := map[string]*string{
		"KEYCLOAK_ADMIN_CLIENT_SECRET": &s.AdminClientSecret,
		"OPERATOR_CLIENT_SECRET":       &s.OperatorClientSecret,
		"VIEWER_CLIENT_SECRET":         &s.ViewerClientSecret,
		"PIPELINE_CLIENT_SECRET":       &s.PipelineClientSecret,
		"KEYCLOAK_ADMIN_PASSWORD":      &s.KeycloakAdminPassword,
		"MQTT_ADMIN_PASSWORD":          &s.MQTTAdminPassword,
	}
	names := []string{"POSTGRES_PORT", "MQTT_PORT", "KEYCLOAK_PORT", "KEYCLOAK_MANAGEMENT_PORT"}
	env, err := ReadEnvFile(path)
	fresh := errors.Is(err, os.ErrNotExist)
	switch {
	case fresh:
		env = map[string]string{}
	case err != nil:
		return nil, err
	}
	if withS3 {
		secrets["S3_SECRET_ACCESS_KEY"] = &s.S3SecretAccessKey
		names = append(names, "S3_PORT")
	}
	missing := 0
	for _, n := range names {
		if env[n] == "" {
			missing++
		}
	}
	picked, err := freePorts(missing)
	if err != nil {
		return nil, err
	}
	ports := make([]int, len(names))
	for i, n := range names {
		if env[n] == "" {
			if !fresh && n != "S3_PORT" {
				return nil, fmt.Errorf("%s has no %s", path, n)
			}
			ports[i], picked = picked[0], picked[1:]
			env[n] = strconv.Itoa(ports[i])
			continue
		}
		if ports[i], err = strconv.Atoi(env[n]); err != nil || ports[i] <= 0 {
			return nil, fmt.Errorf("%s: %s is not a port", path, n)
		}
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[i])); err != nil {
			return nil, fmt.Errorf("port %d of this data directory (%s) is taken: is its stack running already? (%w)", ports[i], n, err)
		} else {
			ln.Close()
		}
	}
	for k, p := range secrets {
		switch {
		case env[k] != "":
			*p = env[k]
		case fresh || k == "S3_SECRET_ACCESS_KEY" || k == "MQTT_ADMIN_PASSWORD" || k == "PIPELINE_CLIENT_SECRET":
			// Added since the directory's first run (the pipeline's client
			// is then made by espmdm dev, which reads its secret back).
			env[k] = *p
		default:
			return nil, fmt.Errorf("%s has no %s", path, k)
		}
	}
	if !withS3 {
		ports = append(ports, 0)
	}
	return ports, WriteEnvFile(path, env)
}

// ServeEnv returns the `espmdm serve` variables the stack determines: where
// Keycloak, its realm, the admin client, the device audience and the broker
// (MQTT_URL with espmdm's broker account, MQTTAdminURL) are. A server on the
// stack adds its own DATABASE_URL, HTTP_ADDR, BASE_URL, SECRET_KEY and
// FIRMWARE_DIR.
func (s *Stack) ServeEnv() map[string]string {
	env := map[string]string{
		"KEYCLOAK_URL":                 s.KeycloakURL,
		"KEYCLOAK_REALM":               s.Realm,
		"KEYCLOAK_ADMIN_CLIENT_ID":     s.AdminClientID,
		"KEYCLOAK_ADMIN_CLIENT_SECRET": s.AdminClientSecret,
		"OIDC_ISSUER_URL":              s.IssuerURL,
		"OIDC_TOKEN_URL":               s.TokenURL,
		"DEVICE_AUDIENCE":              s.DeviceAudience,
		"MQTT_URL":                     s.MQTTAdminURL(),
	}
	maps.Copy(env, s.S3Env())
	return env
}

// MQTTAdminURL is the broker with espmdm's own account:
// mqtt://MQTTAdminUser:MQTTAdminPassword@127.0.0.1:PORT, the MQTT_URL of
// `espmdm serve`. Without an admin account (an attached stack from before
// them) it is MQTTURL.
func (s *Stack) MQTTAdminURL() string {
	if s.MQTTAdminUser == "" {
		return s.MQTTURL
	}
	u, err := url.Parse(s.MQTTURL)
	if err != nil {
		return s.MQTTURL
	}
	u.User = url.UserPassword(s.MQTTAdminUser, s.MQTTAdminPassword)
	return u.String()
}

// S3Env is where the stack's S3-compatible server is, as the S3_*
// variables of `espmdm serve` (SPEC §20; BLOB_STORE=s3 selects it, and a
// server picks its own S3_PREFIX); empty without one.
func (s *Stack) S3Env() map[string]string {
	if s.S3Endpoint == "" {
		return map[string]string{}
	}
	return map[string]string{
		"S3_ENDPOINT":          s.S3Endpoint,
		"S3_REGION":            s.S3Region,
		"S3_BUCKET":            s.S3Bucket,
		"S3_ACCESS_KEY_ID":     s.S3AccessKeyID,
		"S3_SECRET_ACCESS_KEY": s.S3SecretAccessKey,
		"S3_FORCE_PATH_STYLE":  "true",
	}
}

// Env returns the stack as KEY=value pairs: the variables `espmdm dev`
// writes and `espmdm serve` reads (MQTT_URL with espmdm's broker account),
// plus MQTT_ANONYMOUS (whether the broker lets clients in without one).
func (s *Stack) Env() map[string]string {
	env := map[string]string{
		"ESPMDM_LAUNCHER":              s.Launcher,
		"DATABASE_URL":                 s.DatabaseURL,
		"KEYCLOAK_URL":                 s.KeycloakURL,
		"KEYCLOAK_REALM":               s.Realm,
		"OIDC_ISSUER_URL":              s.IssuerURL,
		"OIDC_TOKEN_URL":               s.TokenURL,
		"KEYCLOAK_ADMIN_CLIENT_ID":     s.AdminClientID,
		"KEYCLOAK_ADMIN_CLIENT_SECRET": s.AdminClientSecret,
		"OPERATOR_CLIENT_ID":           s.OperatorClientID,
		"OPERATOR_CLIENT_SECRET":       s.OperatorClientSecret,
		"VIEWER_CLIENT_ID":             s.ViewerClientID,
		"VIEWER_CLIENT_SECRET":         s.ViewerClientSecret,
		"PIPELINE_CLIENT_ID":           s.PipelineClientID,
		"PIPELINE_CLIENT_SECRET":       s.PipelineClientSecret,
		"DEVICE_AUDIENCE":              s.DeviceAudience,
		"KEYCLOAK_ADMIN_USER":          s.KeycloakAdminUser,
		"KEYCLOAK_ADMIN_PASSWORD":      s.KeycloakAdminPassword,
		"MQTT_URL":                     s.MQTTAdminURL(),
		"MQTT_ANONYMOUS":               strconv.FormatBool(s.MQTTAnonymous),
		"ROTATION_GRACE":               s.RotationGrace.String(),
		EnvControlSocket:               s.control,
	}
	maps.Copy(env, s.S3Env())
	return env
}

// WriteEnvFile writes env (e.g. Stack.Env plus extra keys) as sorted
// KEY=value lines, readable only by the owner since it holds secrets. The
// file appears atomically.
func WriteEnvFile(path string, env map[string]string) error {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, env[k])
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadEnvFile reads KEY=value lines; blank lines and # comments are skipped.
func ReadEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: not KEY=value", path, n)
		}
		env[strings.TrimSpace(k)] = v
	}
	return env, sc.Err()
}

// Attach describes a stack that another process started, from its env file.
// The returned stack cannot stop or restart services.
func Attach(path string) (*Stack, error) {
	env, err := ReadEnvFile(path)
	if err != nil {
		return nil, fmt.Errorf("attach to stack: %w", err)
	}
	st := &Stack{
		attached:              true,
		Launcher:              env["ESPMDM_LAUNCHER"],
		DatabaseURL:           env["DATABASE_URL"],
		KeycloakURL:           env["KEYCLOAK_URL"],
		Realm:                 env["KEYCLOAK_REALM"],
		IssuerURL:             env["OIDC_ISSUER_URL"],
		TokenURL:              env["OIDC_TOKEN_URL"],
		AdminClientID:         env["KEYCLOAK_ADMIN_CLIENT_ID"],
		AdminClientSecret:     env["KEYCLOAK_ADMIN_CLIENT_SECRET"],
		OperatorClientID:      env["OPERATOR_CLIENT_ID"],
		OperatorClientSecret:  env["OPERATOR_CLIENT_SECRET"],
		ViewerClientID:        env["VIEWER_CLIENT_ID"],
		ViewerClientSecret:    env["VIEWER_CLIENT_SECRET"],
		PipelineClientID:      env["PIPELINE_CLIENT_ID"],
		PipelineClientSecret:  env["PIPELINE_CLIENT_SECRET"],
		DeviceAudience:        env["DEVICE_AUDIENCE"],
		KeycloakAdminUser:     env["KEYCLOAK_ADMIN_USER"],
		KeycloakAdminPassword: env["KEYCLOAK_ADMIN_PASSWORD"],
		S3Endpoint:            env["S3_ENDPOINT"],
		S3Region:              env["S3_REGION"],
		S3Bucket:              env["S3_BUCKET"],
		S3AccessKeyID:         env["S3_ACCESS_KEY_ID"],
		S3SecretAccessKey:     env["S3_SECRET_ACCESS_KEY"],
		RotationGrace:         DefaultRotationGrace,
		control:               env[EnvControlSocket],
	}
	if g, err := time.ParseDuration(env["ROTATION_GRACE"]); err == nil && g > 0 {
		st.RotationGrace = g
	}
	// MQTT_URL carries espmdm's account; the stack's MQTTURL is what
	// devices get, without it.
	if raw := env["MQTT_URL"]; raw != "" {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("attach to stack: %s: MQTT_URL is not a URL", path)
		}
		if u.User != nil {
			st.MQTTAdminUser = u.User.Username()
			st.MQTTAdminPassword, _ = u.User.Password()
			u.User = nil
		}
		st.MQTTURL = u.String()
	}
	// A stack from before broker accounts let everyone in.
	st.MQTTAnonymous = true
	if v, err := strconv.ParseBool(env["MQTT_ANONYMOUS"]); err == nil {
		st.MQTTAnonymous = v
	}
	for k, v := range map[string]string{"DATABASE_URL": st.DatabaseURL, "KEYCLOAK_URL": st.KeycloakURL, "MQTT_URL": st.MQTTURL, "OIDC_TOKEN_URL": st.TokenURL} {
		if v == "" {
			return nil, fmt.Errorf("attach to stack: %s has no %s", path, k)
		}
	}
	return st, nil
}

func randomSecret() string {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error()) // never happens on Linux
	}
	return hex.EncodeToString(b)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// waitFor polls check every interval until it succeeds, ctx ends or
// timeout passes; the last check error explains a failure.
func waitFor(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %w", timeout, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
