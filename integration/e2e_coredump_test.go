package integration_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/integration"
)

// Core dumps end to end (SPEC §17), against the real tools make deps
// installs: a real ESP32-C3 firmware image and the ELF it was built from,
// the real dump it left, uploaded with a device token; no_elf until the
// ELF arrives, then the analysis; a server without its tools keeps the
// dump pending with the reason, and the next server with them analyses it.

const coredumpData = "../adapters/coredump/testdata/"

type coredumpFrame struct {
	PC       string  `json:"pc"`
	Function *string `json:"function"`
	File     *string `json:"file"`
	Line     *int    `json:"line"`
}

type coredumpAnswer struct {
	ID              int64   `json:"id"`
	DeviceID        int64   `json:"device_id"`
	ClientID        string  `json:"client_id"`
	Size            int64   `json:"size"`
	SHA256          string  `json:"sha256"`
	Chip            *string `json:"chip"`
	Format          *string `json:"format"`
	ELFSHA256Prefix *string `json:"elf_sha256_prefix"`
	Status          string  `json:"status"`
	Reason          *string `json:"reason"`
	ELFSHA256       *string `json:"elf_sha256"`
	FirmwareVersion *string `json:"firmware_version"`
	Analysis        *struct {
		CrashedTask *string         `json:"crashed_task"`
		PanicReason *string         `json:"panic_reason"`
		CrashFrame  *coredumpFrame  `json:"crash_frame"`
		Frames      []coredumpFrame `json:"frames"`
		Notes       []string        `json:"notes"`
		Text        string          `json:"text"`
	} `json:"analysis"`
}

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(coredumpData + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitCoredump polls GET /api/coredumps/{id} until its status is want.
func waitCoredump(t *testing.T, s *server, id int64, want string, timeout time.Duration) coredumpAnswer {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var c coredumpAnswer
		r := s.do(http.MethodGet, fmt.Sprintf("/api/coredumps/%d", id), s.viewer, nil).want(t, http.StatusOK, &c)
		if c.Status == want {
			return c
		}
		if c.Status == "failed" || c.Status == "analysed" || time.Now().After(deadline) {
			t.Fatalf("core dump %d: not %s after %s: %s", id, want, timeout, r.body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func uploadDump(t *testing.T, s *server, tok string, dump []byte, status int) int64 {
	t.Helper()
	var out struct {
		ID int64 `json:"id"`
	}
	r := s.request(http.MethodPost, "/iot/coredump", tok, bytes.NewReader(dump), "Content-Type", "application/octet-stream")
	if status != http.StatusCreated {
		r.wantProblem(t, status)
		return 0
	}
	r.want(t, http.StatusCreated, &out)
	if out.ID <= 0 {
		t.Fatalf("POST /iot/coredump: id %d", out.ID)
	}
	return out.ID
}

func TestE2ECoredumps(t *testing.T) {
	img, elf, dump := readTestdata(t, "esp32c3.bin"), readTestdata(t, "esp32c3.elf"), readTestdata(t, "esp32c3.coredump")
	imgSum, elfSum, dumpSum := sha256.Sum256(img), sha256.Sum256(elf), sha256.Sum256(dump)

	// A server whose tools are missing: the dump is kept, pending, with why.
	db, blobs := integration.Shared(t).NewDatabase(t), t.TempDir()
	first := startServer(t, map[string]string{"DATABASE_URL": db, "FIRMWARE_DIR": blobs, "COREDUMP_TOOL": "/nonexistent/esp-coredump"})
	m := newModel(t, first, nil)
	d := newDevice(t, first, m.ID, `{}`)
	tok := deviceTokenOf(t, first, d.ID)
	first.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), first.admin,
		bytes.NewReader(img), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, nil)
	first.request(http.MethodPut, fmt.Sprintf("/api/device-models/%d/firmware/%x/elf", m.ID, imgSum), first.admin,
		bytes.NewReader(elf), "Content-Type", "application/octet-stream").want(t, http.StatusOK, nil)
	pendingID := uploadDump(t, first, tok, dump, http.StatusCreated)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var c coredumpAnswer
		first.do(http.MethodGet, fmt.Sprintf("/api/coredumps/%d", pendingID), first.viewer, nil).want(t, http.StatusOK, &c)
		if c.Status != "pending" {
			t.Fatalf("without its tools the dump is %s, want pending", c.Status)
		}
		if c.Reason != nil && strings.Contains(*c.Reason, "esp-coredump") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reason naming the missing tool after 30 s: %+v", c)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if first.logs.FilterMessageSnippet("core dump analysis tools missing").Len() == 0 {
		t.Error("the server did not say at start that the tools are missing")
	}
	first.stop()

	// The next server on the same database, with the tools: the pending
	// dump is tried again once the first server's retry time (its
	// COREDUMP_POLL_SECONDS, 10 s) has passed.
	s := startServer(t, map[string]string{"DATABASE_URL": db, "FIRMWARE_DIR": blobs, "COREDUMP_POLL_SECONDS": "1", "COREDUMP_KEEP": "2"})
	c := waitCoredump(t, s, pendingID, "analysed", 2*time.Minute)
	if c.Analysis == nil || c.Analysis.CrashFrame == nil || c.Analysis.CrashFrame.Function == nil || *c.Analysis.CrashFrame.Function != "fail_once" {
		t.Fatalf("the analysis after the restart: %+v", c.Analysis)
	}

	t.Run("a component device uploads the dump a crash left and erases it", func(t *testing.T) {
		// The image and its ELF in one multipart upload, as a CI job sends them.
		m := newModel(t, s, nil)
		var form bytes.Buffer
		mw := multipart.NewWriter(&form)
		for _, p := range []struct {
			field string
			data  []byte
		}{{"file", img}, {"elf", elf}} {
			w, err := mw.CreateFormFile(p.field, p.field+".bin")
			if err != nil {
				t.Fatal(err)
			}
			_, _ = w.Write(p.data)
		}
		_ = mw.Close()
		var fw struct {
			HasELF bool `json:"has_elf"`
		}
		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
			&form, "Content-Type", mw.FormDataContentType()).want(t, http.StatusCreated, &fw)
		if !fw.HasELF {
			t.Fatalf("the multipart upload with its ELF: has_elf false")
		}
		d := newDevice(t, s, m.ID, `{}`)
		// It runs the uploaded image already, so no OTA comes first.
		parsed, err := esp32image.Parse(img)
		if err != nil {
			t.Fatal(err)
		}
		h := newHostDevice(t, s, d, parsed.AppDesc.Version)
		dumpFile := filepath.Join(h.dir, "coredump", "0001.core")
		if err := os.MkdirAll(filepath.Dir(dumpFile), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dumpFile, dump, 0o600); err != nil {
			t.Fatal(err)
		}
		from := h.mark()
		h.start()
		defer h.stop()
		ev := h.waitEvent(from, time.Minute, "coredump_uploaded")
		if ev.Size != int64(len(dump)) {
			t.Errorf("coredump_uploaded size %d, want %d", ev.Size, len(dump))
		}
		if _, err := os.Stat(dumpFile); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the dump file after the upload: %v, want it erased", err)
		}
		var list struct {
			Coredumps []coredumpAnswer `json:"coredumps"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/coredumps", d.ID), s.viewer, nil).want(t, http.StatusOK, &list)
		if len(list.Coredumps) != 1 || list.Coredumps[0].SHA256 != hex.EncodeToString(dumpSum[:]) {
			t.Fatalf("the device's dumps: %+v", list.Coredumps)
		}
		c := waitCoredump(t, s, list.Coredumps[0].ID, "analysed", 2*time.Minute)
		if c.Analysis == nil || c.Analysis.CrashFrame == nil || c.Analysis.CrashFrame.Function == nil || *c.Analysis.CrashFrame.Function != "fail_once" {
			t.Errorf("the component's dump analysed as %+v", c.Analysis)
		}
	})

	t.Run("upload, no_elf, the ELF, analysed", func(t *testing.T) {
		m := newModel(t, s, nil)
		d := newDevice(t, s, m.ID, `{}`)
		tok := deviceTokenOf(t, s, d.ID)
		var fw struct {
			SHA256    string  `json:"sha256"`
			ELFSHA256 *string `json:"elf_sha256"`
			HasELF    bool    `json:"has_elf"`
		}
		// An ELF before its image is refused, and nothing is recorded.
		var form bytes.Buffer
		mw := multipart.NewWriter(&form)
		for _, field := range []string{"elf", "file"} {
			w, _ := mw.CreateFormFile(field, field)
			_, _ = w.Write(map[string][]byte{"elf": elf, "file": img}[field])
		}
		_ = mw.Close()
		if p := s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
			&form, "Content-Type", mw.FormDataContentType()).wantProblem(t, http.StatusBadRequest); !strings.Contains(p, "before") {
			t.Errorf("an elf field before the file: %s", p)
		}

		s.request(http.MethodPost, fmt.Sprintf("/api/device-models/%d/firmware", m.ID), s.admin,
			bytes.NewReader(img), "Content-Type", "application/octet-stream").want(t, http.StatusCreated, &fw)
		if fw.ELFSHA256 == nil || *fw.ELFSHA256 != hex.EncodeToString(elfSum[:]) || fw.HasELF {
			t.Fatalf("upload of the image: %+v, want elf_sha256 %x and no ELF yet", fw, elfSum)
		}

		id := uploadDump(t, s, tok, dump, http.StatusCreated)
		c := waitCoredump(t, s, id, "no_elf", time.Minute)
		if c.Reason == nil || !strings.Contains(*c.Reason, "7d946a8e8") || c.ClientID != d.ClientID || c.DeviceID != d.ID ||
			c.Size != int64(len(dump)) || c.SHA256 != hex.EncodeToString(dumpSum[:]) || c.Chip == nil || *c.Chip != "esp32c3" ||
			c.Format == nil || *c.Format != "elf" || c.ELFSHA256Prefix == nil || *c.ELFSHA256Prefix != "7d946a8e8" {
			t.Fatalf("before the ELF: %+v", c)
		}

		// Another ELF than the image's: 400 naming both digests.
		wrong := append(bytes.Clone(elf[:4096]), "not the ELF"...)
		wrongSum := sha256.Sum256(wrong)
		problem := s.request(http.MethodPut, fmt.Sprintf("/api/device-models/%d/firmware/%s/elf", m.ID, fw.SHA256), s.admin,
			bytes.NewReader(wrong), "Content-Type", "application/octet-stream").wantProblem(t, http.StatusBadRequest)
		if !strings.Contains(problem, hex.EncodeToString(wrongSum[:])) || !strings.Contains(problem, hex.EncodeToString(elfSum[:])) {
			t.Errorf("a wrong ELF: %s, want both digests", problem)
		}
		s.request(http.MethodPut, fmt.Sprintf("/api/device-models/%d/firmware/%s/elf", m.ID, strings.Repeat("0", 64)), s.admin,
			bytes.NewReader(elf), "Content-Type", "application/octet-stream").wantProblem(t, http.StatusNotFound)

		s.request(http.MethodPut, fmt.Sprintf("/api/device-models/%d/firmware/%s/elf", m.ID, fw.SHA256), s.admin,
			bytes.NewReader(elf), "Content-Type", "application/octet-stream").want(t, http.StatusOK, &fw)
		if !fw.HasELF {
			t.Errorf("after the ELF: has_elf false")
		}
		var hist struct {
			Versions []struct {
				HasELF bool `json:"has_elf"`
			} `json:"versions"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d/firmware/versions", m.ID), s.viewer, nil).want(t, http.StatusOK, &hist)
		if len(hist.Versions) != 1 || !hist.Versions[0].HasELF {
			t.Errorf("history %+v, want has_elf", hist)
		}

		c = waitCoredump(t, s, id, "analysed", 2*time.Minute)
		a := c.Analysis
		if a == nil || a.PanicReason == nil || !strings.Contains(*a.PanicReason, "abort()") || a.CrashedTask == nil || *a.CrashedTask == "" ||
			a.CrashFrame == nil || a.CrashFrame.Function == nil || *a.CrashFrame.Function != "fail_once" ||
			a.CrashFrame.File == nil || !strings.HasSuffix(*a.CrashFrame.File, "test_core_dump.c") || a.CrashFrame.Line == nil || *a.CrashFrame.Line != 14 ||
			len(a.Frames) < 3 || !strings.Contains(a.Text, "fail_once") {
			t.Fatalf("analysis %+v", a)
		}
		frames := make([]string, 0, len(a.Frames))
		for _, f := range a.Frames {
			frames = append(frames, fmt.Sprintf("%s %s %s:%d", f.PC, deref(f.Function), deref(f.File), derefInt(f.Line)))
		}
		t.Logf("analysis: task %s, %q, crash frame %s at %s:%d, frames:\n  %s", *a.CrashedTask, *a.PanicReason,
			*a.CrashFrame.Function, *a.CrashFrame.File, *a.CrashFrame.Line, strings.Join(frames, "\n  "))
		if c.ELFSHA256 == nil || *c.ELFSHA256 != hex.EncodeToString(elfSum[:]) || c.FirmwareVersion == nil {
			t.Errorf("analysed against %v (%v), want the ELF %x", c.ELFSHA256, c.FirmwareVersion, elfSum)
		}

		var crashes struct {
			Days    int `json:"days"`
			Crashes []struct {
				Function        *string `json:"function"`
				FirmwareVersion string  `json:"firmware_version"`
				Count           int     `json:"count"`
				LastCoredumpID  int64   `json:"last_coredump_id"`
			} `json:"crashes"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/device-models/%d/crashes", m.ID), s.viewer, nil).want(t, http.StatusOK, &crashes)
		if crashes.Days != 30 || len(crashes.Crashes) != 1 || crashes.Crashes[0].Function == nil || *crashes.Crashes[0].Function != "fail_once" ||
			crashes.Crashes[0].Count != 1 || crashes.Crashes[0].LastCoredumpID != id {
			t.Errorf("the model's crashes: %+v", crashes)
		}

		// The bytes as the device sent them.
		r := s.do(http.MethodGet, fmt.Sprintf("/api/coredumps/%d/download", id), s.viewer, nil).want(t, http.StatusOK, nil)
		if !bytes.Equal(r.body, dump) {
			t.Errorf("download: %d bytes, not the dump's %d", len(r.body), len(dump))
		}

		// Garbage is kept as failed, with why; more than COREDUMP_MAX_BYTES
		// is a 413 and nothing is kept.
		bad := uploadDump(t, s, tok, []byte("this is no core dump"), http.StatusCreated)
		if c := waitCoredump(t, s, bad, "failed", 10*time.Second); c.Reason == nil || !strings.HasPrefix(*c.Reason, "not a core dump") {
			t.Errorf("garbage: %+v", c)
		}
		uploadDump(t, s, tok, make([]byte, 1<<20+1), http.StatusRequestEntityTooLarge)
		var list struct {
			Coredumps []coredumpAnswer `json:"coredumps"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/coredumps", d.ID), s.viewer, nil).want(t, http.StatusOK, &list)
		if len(list.Coredumps) != 2 || list.Coredumps[0].ID != bad || list.Coredumps[1].ID != id {
			t.Fatalf("list %+v, want the garbage then the dump (newest first), nothing of the refused one", list.Coredumps)
		}

		// Retention: COREDUMP_KEEP=2, a third upload deletes the oldest.
		third := uploadDump(t, s, tok, []byte("another garbage dump"), http.StatusCreated)
		s.do(http.MethodGet, fmt.Sprintf("/api/devices/%d/coredumps", d.ID), s.viewer, nil).want(t, http.StatusOK, &list)
		if len(list.Coredumps) != 2 || list.Coredumps[0].ID != third || list.Coredumps[1].ID != bad {
			t.Fatalf("after a third upload: %+v, want the two newest", list.Coredumps)
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/coredumps/%d", id), s.viewer, nil).wantProblem(t, http.StatusNotFound)

		// Device tokens are refused on the admin routes; viewers cannot delete.
		s.do(http.MethodGet, fmt.Sprintf("/api/coredumps/%d", third), tok, nil).wantProblem(t, http.StatusUnauthorized)
		s.do(http.MethodDelete, fmt.Sprintf("/api/coredumps/%d", bad), s.viewer, nil).wantProblem(t, http.StatusForbidden)
		s.do(http.MethodDelete, fmt.Sprintf("/api/coredumps/%d", bad), s.admin, nil).want(t, http.StatusNoContent, nil)
		s.do(http.MethodGet, fmt.Sprintf("/api/coredumps/%d", bad), s.viewer, nil).wantProblem(t, http.StatusNotFound)

		var audit struct {
			Entries []struct {
				Kind     string `json:"kind"`
				DeviceID *int64 `json:"device_id"`
			} `json:"entries"`
		}
		s.do(http.MethodGet, fmt.Sprintf("/api/audit?device_id=%d&limit=1000", d.ID), s.viewer, nil).want(t, http.StatusOK, &audit)
		kinds := map[string]int{}
		for _, e := range audit.Entries {
			kinds[e.Kind]++
		}
		if kinds["coredump_uploaded"] != 3 || kinds["coredump_deleted"] != 1 {
			t.Errorf("audit kinds %v, want 3 coredump_uploaded and 1 coredump_deleted", kinds)
		}

		body := string(s.do(http.MethodGet, "/metrics", "", nil).want(t, http.StatusOK, nil).body)
		if want := fmt.Sprintf(`espmdm_coredumps_total{model=%q,status="failed"} 1`, m.Code); !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	})
}

func derefInt(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
