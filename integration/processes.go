package integration

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
)

// processes runs the services as child processes on this machine.
type processes struct{}

func (processes) Name() string { return "processes" }

// spawn starts every child from one goroutine locked to its OS thread for
// the life of the process: Linux sends the parent-death signal when the
// forking *thread* exits, so the thread must outlive the children.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawnReqs <- spawnReq{cmd: cmd, done: done}
	return <-done
}

// procService is a long-running child process with a readiness check.
type procService struct {
	name         ServiceName
	newCmd       func() (*exec.Cmd, error)
	ready        func(context.Context) error
	readyTimeout time.Duration
	stopSignal   syscall.Signal
	logPath      string
	log          io.Writer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

func (p *procService) Name() ServiceName { return p.name }

func (p *procService) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	cmd, err := p.newCmd()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	out := io.MultiWriter(logf, p.log)
	cmd.Stdout, cmd.Stderr = out, out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = p.stopSignal
	}
	if err := spawn(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("run %s: %w", cmd.Path, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited

	err = waitFor(ctx, p.readyTimeout, func(ctx context.Context) error {
		select {
		case <-exited:
			return errExited
		default:
		}
		return p.ready(ctx)
	})
	if err != nil {
		_ = p.stopLocked() // the start error says more
		return fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, p.logPath, tail(p.logPath, 3000))
	}
	return nil
}

var errExited = errors.New("process exited")

func (p *procService) Stop(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked()
}

func (p *procService) stopLocked() error {
	if p.cmd == nil {
		return nil
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, p.stopSignal)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.exited
	}
	// Whatever the leader left in its group goes too.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	p.cmd, p.exited = nil, nil
	return nil
}

// tail returns the last n bytes of a file, for start errors.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// ---- PostgreSQL ----

func (processes) NewPostgres(spec PostgresSpec) (Service, error) {
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	cred, uid, gid, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, err
	}
	data := filepath.Join(spec.Dir, "data")
	if cred != nil {
		if err := os.Chown(spec.Dir, uid, gid); err != nil {
			return nil, fmt.Errorf("postgres directory: %w", err)
		}
	}
	// A data directory kept from an earlier run is initialised already.
	_, statErr := os.Stat(filepath.Join(data, "PG_VERSION"))
	initialised := statErr == nil
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", spec.Port)
	return &procService{
		name:         Postgres,
		readyTimeout: 60 * time.Second,
		stopSignal:   syscall.SIGINT, // fast shutdown
		logPath:      filepath.Join(spec.Dir, "postgres.log"),
		log:          spec.Log,
		newCmd: func() (*exec.Cmd, error) {
			if !initialised {
				cmd := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
				if out, err := cmd.CombinedOutput(); err != nil {
					return nil, fmt.Errorf("initdb: %w: %s", err, out)
				}
				initialised = true
			}
			args := []string{"-D", data,
				"-p", strconv.Itoa(spec.Port), "-k", spec.Dir, "-c", "listen_addresses=127.0.0.1",
				// A throwaway test/dev database: durability buys nothing here.
				"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
				"-c", "max_connections=200"}
			// The benchmarks count espmdm's statements with
			// pg_stat_statements where it is installed (its cost is a
			// hash table entry per statement shape).
			if hasStatStatements(filepath.Join(bin, "postgres")) {
				args = append(args, "-c", "shared_preload_libraries=pg_stat_statements")
			}
			cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
			return cmd, nil
		},
		ready: func(ctx context.Context) error {
			db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
			defer db.Close()
			return db.PingContext(ctx)
		},
	}, nil
}

// hasStatStatements reports whether the pg_stat_statements module sits
// beside the postgres binary (following a symlink such as
// /usr/local/bin/postgres to Debian's /usr/lib/postgresql/<major>/bin).
func hasStatStatements(postgres string) bool {
	real, err := filepath.EvalSymlinks(postgres)
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(filepath.Dir(filepath.Dir(real)), "lib", "pg_stat_statements.so"))
	return err == nil
}

// postgresBinDir finds initdb/postgres: on PATH, else Debian's
// /usr/lib/postgresql/<major>/bin (newest major).
func postgresBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		return majorOf(dirs[i]) > majorOf(dirs[j])
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries not found (no initdb on PATH or in /usr/lib/postgresql/*/bin); run `make deps` or install the Debian package postgresql")
}

func majorOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// postgresCredential: initdb refuses to run as root, so as root the server
// runs as the postgres system user.
func postgresCredential() (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, os.Getuid(), os.Getgid(), nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root needs the postgres system user (install the Debian package postgresql): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

// ---- Mosquitto ----

func (processes) NewMosquitto(spec MosquittoSpec) (Service, error) {
	hint := "run `make deps` or install the Debian package mosquitto"
	bin, err := findProgram("mosquitto", "/usr/sbin/mosquitto", hint)
	if err != nil {
		return nil, err
	}
	ctrl, err := findProgram("mosquitto_ctrl", "/usr/bin/mosquitto_ctrl", hint)
	if err != nil {
		return nil, err
	}
	plugin, err := dynsecPluginPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return nil, err
	}
	// The plugin's state file lives in the broker's directory: with a
	// data directory, or across a stop and start of the service, the
	// accounts stay. Started as root, the broker stays root (it would
	// drop to the mosquitto user, who cannot write where root's stack
	// lives).
	state := filepath.Join(spec.Dir, DynSecStateFile)
	user := ""
	if os.Geteuid() == 0 {
		user = "root"
	}
	conf := filepath.Join(spec.Dir, "mosquitto.conf")
	body := mosquittoConf(fmt.Sprintf("%d 127.0.0.1", spec.Port), spec.Anonymous, plugin, state, user)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return nil, err
	}
	script := filepath.Join(spec.Dir, "mosquitto-start.sh")
	if err := os.WriteFile(script, mosquittoStart, 0o755); err != nil {
		return nil, err
	}
	return &procService{
		name:         Mosquitto,
		readyTimeout: 20 * time.Second,
		stopSignal:   syscall.SIGTERM,
		logPath:      filepath.Join(spec.Dir, "mosquitto.log"),
		log:          spec.Log,
		newCmd: func() (*exec.Cmd, error) {
			// The script execs mosquitto: the process stopped is the broker.
			cmd := exec.Command("/bin/sh", script, state, conf)
			cmd.Env = append(os.Environ(), "MOSQUITTO="+bin, "MOSQUITTO_CTRL="+ctrl,
				"MQTT_ADMIN_USER="+spec.AdminUser, "MQTT_ADMIN_PASSWORD="+spec.AdminPassword)
			return cmd, nil
		},
		ready: mqttCheck(fmt.Sprintf("127.0.0.1:%d", spec.Port), spec.AdminUser, spec.AdminPassword),
	}, nil
}

// ---- Keycloak ----

func (processes) NewKeycloak(spec KeycloakSpec) (Service, error) {
	if err := os.MkdirAll(filepath.Join(spec.Dir, "home", "data", "import"), 0o755); err != nil {
		return nil, err
	}
	home := filepath.Join(spec.Dir, "home")
	if err := os.WriteFile(filepath.Join(home, "data", "import", spec.Realm+"-realm.json"), spec.RealmJSON, 0o644); err != nil {
		return nil, err
	}
	prepared := false
	base := fmt.Sprintf("http://127.0.0.1:%d", spec.Port)
	return &procService{
		name:         Keycloak,
		readyTimeout: 180 * time.Second,
		stopSignal:   syscall.SIGTERM,
		logPath:      filepath.Join(spec.Dir, "keycloak.log"),
		log:          spec.Log,
		newCmd: func() (*exec.Cmd, error) {
			if !prepared {
				dist, err := EnsureKeycloak(context.Background(), spec.CacheDir, spec.Version, spec.Log)
				if err != nil {
					return nil, err
				}
				if err := linkKeycloakHome(dist, home); err != nil {
					return nil, err
				}
				prepared = true
			}
			args := []string{filepath.Join(home, "bin", "kc.sh"), "start-dev",
				"--http-host=127.0.0.1",
				"--http-port=" + strconv.Itoa(spec.Port),
				// A fixed hostname keeps `iss` independent of the Host header.
				"--hostname=" + base,
				"--http-management-port=" + strconv.Itoa(spec.ManagementPort),
				"--health-enabled=true",
				// Grace-mode rotation (SPEC §4) needs Keycloak's preview
				// client secret rotation; the realm import sets its policy.
				"--features=client-secret-rotation",
				"--import-realm"}
			if spec.PostgresPort != 0 {
				if err := createKeycloakDatabase(spec.PostgresPort); err != nil {
					return nil, err
				}
				// Trust authentication: the user is all it takes.
				args = append(args, "--db=postgres",
					fmt.Sprintf("--db-url=jdbc:postgresql://127.0.0.1:%d/keycloak", spec.PostgresPort),
					"--db-username=postgres", "--db-password=postgres")
			} else {
				// dev-file keeps data across a stop/start of this service.
				args = append(args, "--db=dev-file")
			}
			if spec.Metrics {
				args = append(args, "--metrics-enabled=true", "--http-metrics-histograms-enabled=true")
			}
			cmd := exec.Command("/bin/sh", args...)
			cmd.Dir = home
			cmd.Env = os.Environ()
			if os.Getenv("JAVA_OPTS_KC_HEAP") == "" {
				cmd.Env = append(cmd.Env, "JAVA_OPTS_KC_HEAP=-Xms64m -Xmx512m")
			}
			for k, v := range spec.Env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			return cmd, nil
		},
		ready: httpCheck(base + "/realms/" + spec.Realm + "/.well-known/openid-configuration"),
	}, nil
}

// createKeycloakDatabase makes the database "keycloak" on the stack's
// PostgreSQL (started at the same time: it waits up to a minute for it).
func createKeycloakDatabase(port int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn)))
	defer db.Close()
	for {
		var n int
		err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_database WHERE datname = 'keycloak'").Scan(&n)
		if err == nil && n == 0 {
			_, err = db.ExecContext(ctx, "CREATE DATABASE keycloak")
		}
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("keycloak database on PostgreSQL port %d: %w", port, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// linkKeycloakHome makes home a Keycloak home of its own (data, realm
// import) that shares the cached distribution's read-only parts. kc.sh
// derives the home from its own resolved path, so the script is copied.
func linkKeycloakHome(dist, home string) error {
	if err := os.MkdirAll(filepath.Join(home, "bin"), 0o755); err != nil {
		return err
	}
	script, err := os.ReadFile(filepath.Join(dist, "bin", "kc.sh"))
	if err != nil {
		return fmt.Errorf("keycloak distribution: %w", err)
	}
	if err := os.WriteFile(filepath.Join(home, "bin", "kc.sh"), script, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "bin" || e.Name() == "data" {
			continue
		}
		link := filepath.Join(home, e.Name())
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join(dist, e.Name()), link); err != nil {
			return err
		}
	}
	return nil
}

// runQuiet runs a short command and returns its output in the error.
func runQuiet(ctx context.Context, name string, args ...string) error {
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		out := buf.String()
		if len(out) > 3000 {
			out = out[len(out)-3000:]
		}
		return fmt.Errorf("%s: %w\n%s", name, err, out)
	}
	return nil
}
