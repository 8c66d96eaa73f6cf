package mdm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// The real ESP32-C3 dump and the ELF it names (SPEC §17's test input).
const (
	c3Dump = "../model/testdata/esp32c3.coredump"
	c3ELF  = "../../adapters/coredump/testdata/esp32c3.elf"
)

type dumpEnv struct {
	*env
	blobs    *portstest.BlobStore
	analyzer *portstest.CoredumpAnalyzer
	dump     []byte
	elf      []byte
}

func newDumpEnv(t *testing.T, opts ...option) *dumpEnv {
	t.Helper()
	de := &dumpEnv{blobs: portstest.NewBlobStore(), analyzer: &portstest.CoredumpAnalyzer{}}
	var err error
	if de.dump, err = os.ReadFile(c3Dump); err != nil {
		t.Fatal(err)
	}
	if de.elf, err = os.ReadFile(c3ELF); err != nil {
		t.Fatal(err)
	}
	opts = append([]option{func(d *mdm.Deps, c *mdm.Config) {
		d.Blobs, d.Analyzer = de.blobs, de.analyzer
		c.CoredumpKeep = 3
	}}, opts...)
	de.env = newEnv(t, append(opts, func(d *mdm.Deps, _ *mdm.Config) {
		st := d.Devices.(*portstest.Store)
		d.Coredumps, d.ELFs, d.Audit = st, st, st
	})...)
	return de
}

// elfImage is an ESP32-C3 application image whose descriptor names elf.
func elfImage(elf []byte, version string) []byte {
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32C3)
	desc.Version = version
	desc.ELFSHA256 = sha256.Sum256(elf)
	return esp32imagetest.New(esp32image.ChipESP32C3, 4, true, &desc).Bytes()
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// analyse runs the worker until no dump is left to claim.
func (de *dumpEnv) analyse(t *testing.T) int {
	t.Helper()
	n := 0
	for {
		ok, err := de.svc.AnalyseNextCoredump(t.Context())
		if err != nil {
			t.Fatalf("AnalyseNextCoredump: %v", err)
		}
		if !ok {
			return n
		}
		n++
	}
}

// firmwareWithELF uploads version 1.0.0 of the model's firmware, built
// from the test ELF, and the ELF.
func (de *dumpEnv) firmwareWithELF(t *testing.T, m model.DeviceModel) {
	t.Helper()
	img := elfImage(de.elf, "1.0.0")
	if _, err := de.svc.UploadFirmware(t.Context(), m.ID, img, model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := de.svc.UploadELF(t.Context(), m.ID, sum(img), bytes.NewReader(de.elf), -1); err != nil {
		t.Fatal(err)
	}
}

func TestCoredumpUploadThenELFThenAnalysed(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	img := elfImage(de.elf, "1.0.0")
	if _, err := de.svc.UploadFirmware(t.Context(), m.ID, img, model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}

	c, err := de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(de.dump))
	if err != nil {
		t.Fatalf("UploadCoredump: %v", err)
	}
	if c.ID == 0 || c.Status != model.CoredumpPending || c.SHA256 != sum(de.dump) || c.Info.Chip != "esp32c3" || c.ClientID != d.ClientID() {
		t.Fatalf("uploaded %+v", c)
	}
	if got, err := de.blobs.StatBlob(t.Context(), ports.BlobKey{Kind: ports.BlobCoreDump, Namespace: "lamp", SHA256: c.SHA256}); err != nil || got.Size != int64(len(de.dump)) {
		t.Fatalf("dump blob %+v, %v", got, err)
	}
	select {
	case <-de.svc.CoredumpWake():
	default:
		t.Error("an upload did not wake a worker")
	}
	entries := de.store.Audit().Entries()
	if last := entries[len(entries)-1]; last.Kind != model.AuditCoredumpUploaded || last.DeviceID != d.ID || last.ClientID != d.ClientID() || last.Actor != model.DeviceActor(d.ClientID()) {
		t.Errorf("audit %+v", last)
	}

	// No ELF yet: no_elf, saying which.
	if n := de.analyse(t); n != 1 {
		t.Fatalf("analysed %d, want 1", n)
	}
	got, _ := de.svc.GetCoredump(t.Context(), c.ID)
	if got.Status != model.CoredumpNoELF || !strings.Contains(got.Reason, c.Info.ELFSHA256Prefix) {
		t.Fatalf("without the ELF: %s %q", got.Status, got.Reason)
	}

	// The ELF arrives: the dump is analysed against it.
	f, err := de.svc.UploadELF(t.Context(), m.ID, sum(img), bytes.NewReader(de.elf), int64(len(de.elf)))
	if err != nil || !f.HasELF || f.ELFSHA256 != sum(de.elf) {
		t.Fatalf("UploadELF: %+v, %v", f, err)
	}
	if n := de.analyse(t); n != 1 {
		t.Fatalf("analysed %d after the ELF, want 1", n)
	}
	got, _ = de.svc.GetCoredump(t.Context(), c.ID)
	if got.Status != model.CoredumpAnalysed || got.Analysis == nil || got.Analysis.Chip != "esp32c3" ||
		got.ELFSHA256 != sum(de.elf) || got.FirmwareVersion != "1.0.0" || got.AnalysedAt == nil {
		t.Fatalf("after the ELF: %+v", got)
	}
	calls := de.analyzer.Calls()
	if len(calls) != 1 || !bytes.Equal(calls[0].Dump, de.dump) || !bytes.Equal(calls[0].ELF, de.elf) {
		t.Errorf("analyzer calls %d", len(calls))
	}
	hist, _ := de.svc.ListFirmware(t.Context(), m.ID)
	if len(hist) != 1 || !hist[0].HasELF {
		t.Errorf("history %+v", hist)
	}
}

func TestCoredumpELFMustBeTheImages(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	img := elfImage(de.elf, "1.0.0")
	if _, err := de.svc.UploadFirmware(t.Context(), m.ID, img, model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	other := []byte("\x7fELF not the one")
	_, err := de.svc.UploadELF(t.Context(), m.ID, sum(img), bytes.NewReader(other), int64(len(other)))
	var ve *model.ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), sum(other)) || !strings.Contains(err.Error(), sum(de.elf)) {
		t.Fatalf("a wrong ELF: %v, want a validation error naming both digests", err)
	}
	if hist, _ := de.svc.ListFirmware(t.Context(), m.ID); hist[0].HasELF {
		t.Error("a refused ELF marked the upload")
	}
	if _, err := de.svc.UploadELF(t.Context(), m.ID, strings.Repeat("0", 64), bytes.NewReader(de.elf), -1); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("an unknown image: %v, want ErrNotFound", err)
	}
	// An image whose descriptor names no ELF.
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32C3)
	desc.Version, desc.ELFSHA256 = "1.0.1", [32]byte{}
	plain := esp32imagetest.New(esp32image.ChipESP32C3, 4, true, &desc).Bytes()
	if _, err := de.svc.UploadFirmware(t.Context(), m.ID, plain, model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := de.svc.UploadELF(t.Context(), m.ID, sum(plain), bytes.NewReader(de.elf), -1); !errors.As(err, &ve) {
		t.Errorf("an image without app_elf_sha256: %v", err)
	}
	// An image built from a stored ELF has it at once.
	again := elfImage(de.elf, "1.0.2")
	if _, err := de.svc.UploadELF(t.Context(), m.ID, sum(img), bytes.NewReader(de.elf), -1); err != nil {
		t.Fatal(err)
	}
	f, err := de.svc.UploadFirmware(t.Context(), m.ID, again, model.UploadOptions{})
	if err != nil || !f.HasELF {
		t.Errorf("an image of a stored ELF: %+v, %v", f, err)
	}
}

func TestCoredumpBadBytesAreKeptAsFailed(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	c, err := de.svc.UploadCoredump(t.Context(), d, strings.NewReader("not a core dump at all"))
	if err != nil || c.Status != model.CoredumpFailed || !strings.HasPrefix(c.Reason, "not a core dump") {
		t.Fatalf("garbage: %+v, %v", c, err)
	}
	corrupt := bytes.Clone(de.dump)
	corrupt[100] ^= 0xff
	c, err = de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(corrupt))
	if err != nil || c.Status != model.CoredumpFailed || !strings.Contains(c.Reason, "checksum") {
		t.Fatalf("corrupt: %+v, %v", c, err)
	}
	if n := de.analyse(t); n != 0 {
		t.Errorf("failed dumps were claimed: %d", n)
	}
	if _, err := de.svc.UploadCoredump(t.Context(), d, strings.NewReader("")); !errors.As(err, new(*model.ValidationError)) {
		t.Errorf("empty: %v", err)
	}
}

func TestCoredumpTooLargeStoresNothing(t *testing.T) {
	de := newDumpEnv(t, withConfig(func(c *mdm.Config) { c.CoredumpMaxBytes = 1000 }))
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	if _, err := de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(de.dump)); !errors.Is(err, model.ErrTooLarge) {
		t.Fatalf("%d bytes over 1000: %v", len(de.dump), err)
	}
	page, _ := de.svc.ListCoredumps(t.Context(), d.ID, 0, 0)
	n := 0
	_ = de.blobs.ListBlobs(t.Context(), func(ports.BlobInfo) error { n++; return nil })
	if len(page.Coredumps) != 0 || n != 0 {
		t.Errorf("records %d, blobs %d after a refused upload", len(page.Coredumps), n)
	}
}

func TestCoredumpKeepEvictsOldestAndItsBlob(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	var ids []int64
	for i := range 5 {
		c, err := de.svc.UploadCoredump(t.Context(), d, strings.NewReader("dump number "+string(rune('a'+i))))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID)
	}
	page, err := de.svc.ListCoredumps(t.Context(), d.ID, 2, 0)
	if err != nil || len(page.Coredumps) != 2 || page.Coredumps[0].ID != ids[4] || page.NextBeforeID != ids[3] {
		t.Fatalf("first page %+v, %v", page, err)
	}
	page, _ = de.svc.ListCoredumps(t.Context(), d.ID, 2, page.NextBeforeID)
	if len(page.Coredumps) != 1 || page.Coredumps[0].ID != ids[2] || page.NextBeforeID != 0 {
		t.Fatalf("second page %+v", page)
	}
	if _, err := de.svc.GetCoredump(t.Context(), ids[0]); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("the oldest beyond keep 3: %v", err)
	}
	n := 0
	_ = de.blobs.ListBlobs(t.Context(), func(ports.BlobInfo) error { n++; return nil })
	if n != 3 {
		t.Errorf("%d blobs, want the 3 kept", n)
	}
	if _, err := de.svc.ListCoredumps(t.Context(), 999, 0, 0); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("an unknown device: %v", err)
	}
	if _, err := de.svc.ListCoredumps(t.Context(), d.ID, 5000, 0); !errors.As(err, new(*model.ValidationError)) {
		t.Errorf("limit 5000: %v", err)
	}
}

func TestCoredumpSameBytesTwiceShareABlob(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	a, b := de.device(t, m, `{}`), de.device(t, m, `{}`)
	ca, _ := de.svc.UploadCoredump(t.Context(), a, bytes.NewReader(de.dump))
	if _, err := de.svc.UploadCoredump(t.Context(), b, bytes.NewReader(de.dump)); err != nil {
		t.Fatal(err)
	}
	if err := de.svc.DeleteCoredump(t.Context(), ca.ID); err != nil {
		t.Fatal(err)
	}
	key := ports.BlobKey{Kind: ports.BlobCoreDump, Namespace: "lamp", SHA256: sum(de.dump)}
	if _, err := de.blobs.StatBlob(t.Context(), key); err != nil {
		t.Fatalf("the blob B's dump still names was deleted: %v", err)
	}
	if err := de.svc.DeleteDevice(t.Context(), b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := de.blobs.StatBlob(t.Context(), key); !errors.Is(err, model.ErrBlobNotFound) {
		t.Errorf("the blob after its last dump's device was deleted: %v", err)
	}
	entries := de.store.Audit().Entries()
	found := false
	for _, e := range entries {
		if e.Kind == model.AuditCoredumpDeleted && e.DeviceID == a.ID && e.ClientID == a.ClientID() {
			found = true
		}
	}
	if !found {
		t.Error("no coredump_deleted entry for A's dump")
	}
	if err := de.svc.DeleteCoredump(t.Context(), ca.ID); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("deleting again: %v", err)
	}
}

func TestCoredumpDownload(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	c, _ := de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(de.dump))
	_, b, err := de.svc.OpenCoredump(t.Context(), c.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(b)
	b.Close()
	if !bytes.Equal(got, de.dump) {
		t.Error("downloaded bytes differ")
	}
	_ = de.blobs.DeleteBlob(t.Context(), ports.BlobKey{Kind: ports.BlobCoreDump, Namespace: "lamp", SHA256: c.SHA256})
	if _, _, err := de.svc.OpenCoredump(t.Context(), c.ID); !errors.Is(err, model.ErrUnavailable) {
		t.Errorf("a recorded dump whose bytes are gone: %v, want unavailable (not a 404)", err)
	}
}

func TestCoredumpToolsMissingStaysPendingWithReason(t *testing.T) {
	de := newDumpEnv(t)
	de.analyzer.CheckErr = &model.CoredumpToolError{Tool: "esp-coredump", Err: errors.New("not found")}
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	de.firmwareWithELF(t, m)
	c, _ := de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(de.dump))
	if n := de.analyse(t); n != 1 {
		t.Fatalf("claimed %d", n)
	}
	got, _ := de.svc.GetCoredump(t.Context(), c.ID)
	if got.Status != model.CoredumpPending || !strings.Contains(got.Reason, "esp-coredump") {
		t.Fatalf("tools missing: %s %q", got.Status, got.Reason)
	}
	// Not claimed again before its retry time, then again after it; the
	// tools back, it is analysed.
	if n := de.analyse(t); n != 0 {
		t.Errorf("claimed again at once: %d", n)
	}
	de.clock.Advance(mdm.DefaultCoredumpRetry + time.Second)
	de.analyzer.CheckErr = nil
	if n := de.analyse(t); n != 1 {
		t.Fatalf("claimed %d after the retry time", n)
	}
	if got, _ = de.svc.GetCoredump(t.Context(), c.ID); got.Status != model.CoredumpAnalysed {
		t.Errorf("tools back: %s %q", got.Status, got.Reason)
	}
}

func TestCoredumpFailedAnalysisAndAttempts(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	de.firmwareWithELF(t, m)
	de.analyzer.Script = func(_, _ []byte) (model.CoredumpAnalysis, error) {
		return model.CoredumpAnalysis{}, &model.CoredumpFailedError{Reason: "esp-coredump gave up"}
	}
	c, _ := de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(de.dump))
	de.analyse(t)
	if got, _ := de.svc.GetCoredump(t.Context(), c.ID); got.Status != model.CoredumpFailed || got.Reason != "esp-coredump gave up" {
		t.Fatalf("a failed analysis: %s %q", got.Status, got.Reason)
	}

	// An analysis that never finishes (the worker's context ends each
	// time) is given up after CoredumpMaxAttempts.
	de.analyzer.Script = func(_, _ []byte) (model.CoredumpAnalysis, error) {
		return model.CoredumpAnalysis{}, context.DeadlineExceeded
	}
	c, _ = de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(append(bytes.Clone(de.dump), 0)))
	for range mdm.CoredumpMaxAttempts + 1 {
		de.analyse(t)
		de.clock.Advance(mdm.DefaultCoredumpRetry + time.Second)
	}
	got, _ := de.svc.GetCoredump(t.Context(), c.ID)
	if got.Status != model.CoredumpFailed || !strings.Contains(got.Reason, "gave up after") || got.Attempts != mdm.CoredumpMaxAttempts+1 {
		t.Errorf("endless analysis: %s %q after %d attempts", got.Status, got.Reason, got.Attempts)
	}
}

func TestCoredumpClaimOutlivedByItsWorker(t *testing.T) {
	// A worker that dies mid-analysis leaves its claim; the dump is
	// claimed again once the claim ends, and only then.
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	c, _ := de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(de.dump))
	claimed, err := de.store.ClaimCoredumps(t.Context(), de.clock.Now(), de.clock.Now().Add(time.Minute), 5)
	if err != nil || len(claimed) != 1 || claimed[0].ID != c.ID || claimed[0].Attempts != 1 {
		t.Fatalf("claim %+v, %v", claimed, err)
	}
	if n := de.analyse(t); n != 0 {
		t.Errorf("a claimed dump was claimed again: %d", n)
	}
	de.clock.Advance(time.Minute)
	if n := de.analyse(t); n != 1 {
		t.Errorf("the dump was not claimed again after its claim ended: %d", n)
	}
	if got, _ := de.svc.GetCoredump(t.Context(), c.ID); got.Status != model.CoredumpNoELF || got.Attempts != 2 {
		t.Errorf("after the second claim: %s, %d attempts", got.Status, got.Attempts)
	}
}

func TestModelCrashesGroupsTheAnalysed(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	de.firmwareWithELF(t, m)
	de.analyzer.Script = func(_, _ []byte) (model.CoredumpAnalysis, error) {
		return model.CoredumpAnalysis{Frames: []model.CoredumpFrame{{PC: 1, Function: "panic_abort"}, {PC: 2, Function: "fail_once"}}}, nil
	}
	var last model.Coredump
	for i := range 2 {
		last, _ = de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(append(bytes.Clone(de.dump), byte(i))))
	}
	de.analyse(t)
	got, err := de.svc.ModelCrashes(t.Context(), m.ID, 30)
	if err != nil || len(got) != 1 || got[0].Function != "fail_once" || got[0].FirmwareVersion != "1.0.0" || got[0].Count != 2 || got[0].LastID != last.ID {
		t.Fatalf("crashes %+v, %v", got, err)
	}
	if _, err := de.svc.ModelCrashes(t.Context(), m.ID, 0); !errors.As(err, new(*model.ValidationError)) {
		t.Errorf("days 0: %v", err)
	}
	if _, err := de.svc.ModelCrashes(t.Context(), 999, 30); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("an unknown model: %v", err)
	}
}

func TestUploadFirmwareWithELF(t *testing.T) {
	de := newDumpEnv(t)
	m := de.model(t, "lamp", "")
	d := de.device(t, m, `{}`)
	c, _ := de.svc.UploadCoredump(t.Context(), d, bytes.NewReader(de.dump))
	de.analyse(t) // no_elf
	img := elfImage(de.elf, "1.0.0")

	// Another ELF than the image's: refused, nothing recorded.
	_, err := de.svc.UploadFirmwareWithELF(t.Context(), m.ID, img, model.UploadOptions{}, strings.NewReader("\x7fELF another"))
	if !errors.As(err, new(*model.ValidationError)) || !strings.Contains(err.Error(), sum(de.elf)) {
		t.Fatalf("a wrong ELF: %v", err)
	}
	if hist, _ := de.svc.ListFirmware(t.Context(), m.ID); len(hist) != 0 {
		t.Fatalf("a refused ELF recorded the upload: %+v", hist)
	}
	// A broken image is UploadFirmware's error, and reads no ELF.
	if _, err := de.svc.UploadFirmwareWithELF(t.Context(), m.ID, []byte("junk"), model.UploadOptions{}, bytes.NewReader(de.elf)); !errors.As(err, new(*model.ValidationError)) {
		t.Errorf("a broken image: %v", err)
	}

	up, err := de.svc.UploadFirmwareWithELF(t.Context(), m.ID, img, model.UploadOptions{}, bytes.NewReader(de.elf))
	if err != nil || !up.HasELF || up.Unchanged {
		t.Fatalf("image and ELF: %+v, %v", up, err)
	}
	if hist, _ := de.svc.ListFirmware(t.Context(), m.ID); len(hist) != 1 || !hist[0].HasELF {
		t.Errorf("history %+v", hist)
	}
	if got, _ := de.svc.GetCoredump(t.Context(), c.ID); got.Status != model.CoredumpPending {
		t.Errorf("the dump waiting for the ELF: %s", got.Status)
	}
	de.analyse(t)
	if got, _ := de.svc.GetCoredump(t.Context(), c.ID); got.Status != model.CoredumpAnalysed {
		t.Errorf("after the ELF arrived with its image: %s %q", got.Status, got.Reason)
	}
}
