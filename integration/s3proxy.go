package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultS3ProxyVersion is the S3Proxy the stack runs as its S3-compatible
// server (org.gaul:s3proxy from Maven Central; Java 11+, so the Java 17
// that runs Keycloak runs it too).
const DefaultS3ProxyVersion = "2.6.0"

// The stack's S3 identity: one bucket, one access key (the secret is made
// per stack), path-style addressing.
const (
	DefaultS3Bucket    = "espmdm"
	DefaultS3Region    = "us-east-1"
	DefaultS3AccessKey = "espmdm"
)

// S3ProxyJarPath is where Maven puts S3Proxy's self-contained jar of
// version in the local repository ($ESPMDM_S3PROXY_JAR overrides it).
func S3ProxyJarPath(version string) string {
	if p := os.Getenv("ESPMDM_S3PROXY_JAR"); p != "" {
		return p
	}
	repo := os.Getenv("MAVEN_LOCAL_REPO")
	if repo == "" {
		home, _ := os.UserHomeDir()
		repo = filepath.Join(home, ".m2", "repository")
	}
	return filepath.Join(repo, "org", "gaul", "s3proxy", version,
		"s3proxy-"+version+"-jar-with-dependencies.jar")
}

// EnsureS3Proxy returns the path of S3Proxy's jar in cacheDir, fetching
// org.gaul:s3proxy:<version>:jar:jar-with-dependencies with mvn and
// copying it there when missing. Concurrent callers are safe: the copy is
// written under a private name and renamed into place.
func EnsureS3Proxy(ctx context.Context, cacheDir, version string, log io.Writer) (string, error) {
	if log == nil {
		log = io.Discard
	}
	jar := filepath.Join(cacheDir, "s3proxy-"+version+".jar")
	if _, err := os.Stat(jar); err == nil {
		return jar, nil
	}
	src := S3ProxyJarPath(version)
	if _, err := os.Stat(src); err != nil {
		fmt.Fprintf(log, "fetching S3Proxy %s with mvn\n", version)
		ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if err := runQuiet(ctx, "mvn", "-B", "-q", "dependency:get",
			"-Dartifact=org.gaul:s3proxy:"+version+":jar:jar-with-dependencies", "-Dtransitive=false"); err != nil {
			return "", fmt.Errorf("fetch S3Proxy %s from Maven Central: %w", version, err)
		}
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	if err := copyFileAtomic(src, jar); err != nil {
		return "", fmt.Errorf("cache S3Proxy %s: %w", version, err)
	}
	return jar, nil
}

// copyFileAtomic copies src to dst through a temporary file beside dst.
func copyFileAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".copy-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// S3Spec describes the S3-compatible server to create: S3Proxy on the
// filesystem in Dir, with Bucket made and one identity.
type S3Spec struct {
	Port            int
	Dir             string
	Version         string
	CacheDir        string
	Bucket          string
	AccessKeyID     string
	SecretAccessKey string
	Log             io.Writer
}

// NewS3 runs S3Proxy (a Java process) with the jclouds filesystem
// backend: a bucket is a directory of Dir/data, which survives a stop and
// start of the service.
func (processes) NewS3(spec S3Spec) (Service, error) {
	java, err := exec.LookPath("java")
	if err != nil {
		return nil, errors.New("java not found; run `make deps` or install the Debian package openjdk-17-jre-headless")
	}
	data := filepath.Join(spec.Dir, "data")
	if err := os.MkdirAll(filepath.Join(data, spec.Bucket), 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(spec.Dir, "s3proxy.conf")
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", spec.Port)
	props := strings.Join([]string{
		"s3proxy.endpoint=" + endpoint,
		"s3proxy.authorization=aws-v2-or-v4",
		"s3proxy.identity=" + spec.AccessKeyID,
		"s3proxy.credential=" + spec.SecretAccessKey,
		"jclouds.provider=filesystem",
		"jclouds.filesystem.basedir=" + data,
		"",
	}, "\n")
	if err := os.WriteFile(conf, []byte(props), 0o600); err != nil {
		return nil, err
	}
	jar := ""
	return &procService{
		name:         S3,
		readyTimeout: 60 * time.Second,
		stopSignal:   syscall.SIGTERM,
		logPath:      filepath.Join(spec.Dir, "s3proxy.log"),
		log:          spec.Log,
		newCmd: func() (*exec.Cmd, error) {
			if jar == "" {
				var err error
				if jar, err = EnsureS3Proxy(context.Background(), spec.CacheDir, spec.Version, spec.Log); err != nil {
					return nil, err
				}
			}
			heap := os.Getenv("ESPMDM_S3PROXY_JAVA_OPTS")
			if heap == "" {
				heap = "-Xms32m -Xmx256m"
			}
			args := append(strings.Fields(heap), "-jar", jar, "--properties", conf)
			cmd := exec.Command(java, args...)
			cmd.Dir = spec.Dir
			// Its logback start-up chatter and per-request lines are noise
			// here; warnings and errors stay in the log.
			cmd.Env = append(os.Environ(), "LOG_LEVEL=warn")
			return cmd, nil
		},
		ready: s3Check(endpoint),
	}, nil
}

// s3Check succeeds once the S3 endpoint answers HTTP: S3Proxy refuses an
// anonymous request (403) only when it is serving.
func s3Check(endpoint string) func(context.Context) error {
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("GET %s/: %s", endpoint, resp.Status)
		}
		return nil
	}
}
