package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeBlock matches the README's runnable recipes: a ```sh block right
// after a <!-- readme-test --> marker.
var readmeBlock = regexp.MustCompile("(?s)<!-- readme-test -->\\s*```sh\\n(.*?)\\n```")

// readmeRecipes returns the README's runnable blocks in order.
func readmeRecipes(t *testing.T) []string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range readmeBlock.FindAllSubmatch(readme, -1) {
		out = append(out, string(m[1]))
	}
	// The token, the walkthrough and the device side: fewer means a
	// marker was lost and a recipe went untested.
	if len(out) < 3 {
		t.Fatalf("README has %d runnable recipes (<!-- readme-test --> blocks), want at least 3", len(out))
	}
	return out
}

// esptoolShim stands in for esptool: it records its arguments and refuses
// what a real flash would make a mistake of (a missing, short or corrupt
// partition), checking the file with espmdm's own NVS decoder.
const esptoolShim = `#!/usr/bin/env bash
set -euo pipefail
echo "$*" >> "$ESPTOOL_LOG"
[ "$1" = --chip ] && [ "$3" = write-flash ] || { echo "esptool shim: unexpected arguments: $*" >&2; exit 2; }
f="$5"
size=$(stat -c %s "$f")
[ $(( size % 4096 )) -eq 0 ] && [ "$size" -ge 12288 ] || { echo "esptool shim: $f is $size bytes, not an NVS partition" >&2; exit 2; }
bin/espmdm nvs dump --format json "$f" | grep -q '"client_secret"' || { echo "esptool shim: $f has no client_secret" >&2; exit 2; }
`

// runREADMERecipes runs the README's recipes, as written and in order, in
// a fresh directory holding the dev env file and bin/espmdm, against the
// espmdm dev whose env file is envFile.
func runREADMERecipes(t *testing.T, bin, envFile string) {
	t.Helper()
	script := "set -euo pipefail\n" + strings.Join(readmeRecipes(t), "\n")
	dir := t.TempDir()
	envData, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, ".espmdm-dev.env"), envData, 0o600))
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.Symlink(bin, filepath.Join(dir, "bin", "espmdm")))
	shimDir := filepath.Join(dir, "shim")
	must(os.MkdirAll(shimDir, 0o755))
	must(os.WriteFile(filepath.Join(shimDir, "esptool"), []byte(esptoolShim), 0o755)) //nolint:gosec // an executable script
	logPath := filepath.Join(dir, "esptool.log")

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + shimDir + ":" + os.Getenv("PATH"), "HOME=" + dir, "ESPTOOL_LOG=" + logPath}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		// A throwaway dev stack's credentials: fine to show on failure.
		t.Fatalf("README recipes failed: %v\n%s", err, out.String())
	}
	flashed, err := os.ReadFile(logPath)
	if err != nil || strings.TrimSpace(string(flashed)) != "--chip esp32s3 write-flash 0x9000 prov.bin" {
		t.Errorf("esptool was called with %q (%v), want the README's one write-flash", flashed, err)
	}
	for _, f := range []string{"prov.bin", "prov.json", "ota.bin", "build/soil.bin"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("the recipes left no %s (%v)", f, err)
		}
	}
}

// TestREADMERecipesAreMarked checks the extraction without a stack: the
// recipes parse as bash.
func TestREADMERecipesAreMarked(t *testing.T) {
	for i, r := range readmeRecipes(t) {
		cmd := exec.Command("bash", "-n")
		cmd.Stdin = strings.NewReader(r)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("README recipe %d is not valid bash: %v\n%s", i+1, err, out)
		}
	}
}
