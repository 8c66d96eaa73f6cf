package integration

import (
	"archive/zip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultKeycloakVersion is the Keycloak the stack runs. 26.x runs on Java
// 17; 26.7.3 is the newest release Maven Central serves here.
const DefaultKeycloakVersion = "26.7.3"

// DefaultCacheDir is where the Keycloak distribution is unpacked:
// $ESPMDM_CACHE_DIR, else the user cache directory + "/espmdm".
func DefaultCacheDir() string {
	if d := os.Getenv("ESPMDM_CACHE_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "espmdm")
	}
	return filepath.Join(os.TempDir(), "espmdm-cache")
}

// KeycloakZipPath is where Maven puts the distribution of version in the
// local repository ($ESPMDM_KEYCLOAK_ZIP overrides it).
func KeycloakZipPath(version string) string {
	if p := os.Getenv("ESPMDM_KEYCLOAK_ZIP"); p != "" {
		return p
	}
	repo := os.Getenv("MAVEN_LOCAL_REPO")
	if repo == "" {
		home, _ := os.UserHomeDir()
		repo = filepath.Join(home, ".m2", "repository")
	}
	return filepath.Join(repo, "org", "keycloak", "keycloak-quarkus-dist", version,
		"keycloak-quarkus-dist-"+version+".zip")
}

// EnsureKeycloak returns the directory of an unpacked Keycloak
// distribution, fetching org.keycloak:keycloak-quarkus-dist:<version>:zip
// with mvn and unpacking it into cacheDir when missing. Concurrent callers
// are safe: the unpack happens in a private directory and is renamed into
// place.
func EnsureKeycloak(ctx context.Context, cacheDir, version string, log io.Writer) (string, error) {
	if log == nil {
		log = io.Discard
	}
	dist := filepath.Join(cacheDir, "keycloak-"+version)
	if _, err := os.Stat(filepath.Join(dist, "bin", "kc.sh")); err == nil {
		return dist, nil
	}
	zipPath := KeycloakZipPath(version)
	if _, err := os.Stat(zipPath); err != nil {
		fmt.Fprintf(log, "fetching Keycloak %s with mvn\n", version)
		ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
		defer cancel()
		if err := runQuiet(ctx, "mvn", "-B", "-q", "dependency:get",
			"-Dartifact=org.keycloak:keycloak-quarkus-dist:"+version+":zip", "-Dtransitive=false"); err != nil {
			return "", fmt.Errorf("fetch Keycloak %s from Maven Central: %w", version, err)
		}
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".unpack-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := unzip(zipPath, tmp); err != nil {
		return "", fmt.Errorf("unpack %s: %w", zipPath, err)
	}
	if err := os.Rename(filepath.Join(tmp, "keycloak-"+version), dist); err != nil {
		// Another process may have won the race.
		if _, serr := os.Stat(filepath.Join(dist, "bin", "kc.sh")); serr == nil {
			return dist, nil
		}
		return "", fmt.Errorf("unpack Keycloak: %w", err)
	}
	return dist, nil
}

// unzip extracts archive into dir, refusing entries that escape it.
func unzip(archive, dir string) error {
	r, err := zip.OpenReader(archive)
	if err != nil {
		return err
	}
	defer r.Close()
	root := filepath.Clean(dir) + string(os.PathSeparator)
	for _, f := range r.File {
		target := filepath.Join(dir, f.Name)
		if !strings.HasPrefix(target, root) {
			return fmt.Errorf("entry %q escapes the archive", f.Name)
		}
		if f.FileInfo().IsDir() {
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := extractFile(f, target); err != nil {
			return err
		}
	}
	return nil
}

func extractFile(f *zip.File, target string) error {
	rc, err := f.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	mode := f.Mode().Perm() | 0o644
	out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, rc); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
