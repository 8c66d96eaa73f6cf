package fleetrotation

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStallDump(t *testing.T) {
	logf := func(string, ...any) {}
	path := filepath.Join(t.TempDir(), "stall.txt")
	s := newStallDump(path)
	s.after = 0
	s.observe(3, logf) // progress: nothing written
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("written on progress: %v", err)
	}
	s.observe(3, logf) // no progress for s.after: the dump
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), "goroutine profile:") || !strings.Contains(string(b), "TestStallDump") {
		t.Fatalf("dump = %.80q, %v; want every goroutine, this test's among them", b, err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s.observe(3, logf) // once only
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("written twice: %v", err)
	}
	off := newStallDump("")
	off.after = 0
	off.observe(1, logf)
	off.observe(1, logf)
	if off.dumped {
		t.Fatal("dumped without a path")
	}
}
