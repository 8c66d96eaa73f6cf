package httpapi_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"testing"
)

// consoleSnapshot is the copy of the OpenAPI document the console's types
// are generated from (adapters/console/web: npm run gen:api).
const consoleSnapshot = "../console/web/openapi.json"

// TestConsoleOpenAPISnapshot fails when the served document and the
// console's copy differ, so that an API change reaches the console's
// TypeScript types (and breaks its build where it breaks the console).
// UPDATE_CONSOLE_API=1 rewrites the copy (make console-api).
func TestConsoleOpenAPISnapshot(t *testing.T) {
	e := newEnv(t)
	r := e.get("/api/openapi.json", "")
	wantStatus(t, r, http.StatusOK)
	var doc map[string]any
	r.json(t, &doc)
	got, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if os.Getenv("UPDATE_CONSOLE_API") != "" {
		if err := os.WriteFile(consoleSnapshot, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	have, err := os.ReadFile(consoleSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, got) {
		t.Errorf("%s differs from the served OpenAPI document: run make console-api (it regenerates the console's types) and fix what no longer builds", consoleSnapshot)
	}
}
