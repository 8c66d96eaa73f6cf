package portstest

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// CoredumpEnv is what RunCoredumpRepoContract works on: the core dump
// repository and the model, device and firmware repositories of the same
// store (a dump belongs to a device; FirmwareELFs is the firmware
// repository's).
type CoredumpEnv struct {
	Models    ports.ModelRepo
	Devices   ports.DeviceRepo
	Firmware  ports.FirmwareRepo
	ELFs      ports.FirmwareELFs
	Coredumps ports.CoredumpRepo
}

// RunCoredumpRepoContract runs the contract of ports.CoredumpRepo and
// ports.FirmwareELFs. Claims see every pending dump of the store, so the
// store must hold no dumps but this suite's (its subtests run one after
// the other and each removes its devices, and with them their dumps).
func RunCoredumpRepoContract(t *testing.T, newEnv func(t *testing.T) CoredumpEnv) {
	t.Helper()
	fix := func(t *testing.T) (repoFixture, CoredumpEnv) {
		e := newEnv(t)
		return repoFixture{t: t, models: e.Models, devices: e.Devices, firmware: e.Firmware}, e
	}
	dump := func(d model.Device, tag string) model.Coredump {
		sum := make([]byte, 32)
		_, _ = rand.Read(sum)
		return model.Coredump{
			DeviceID: d.ID, SHA256: hex.EncodeToString(sum), Size: 3224, Status: model.CoredumpPending,
			ReceivedAt: now(), Reason: tag,
			Info: model.CoredumpInfo{Chip: "esp32c3", ChipID: 5, Format: model.CoredumpFormatELF, Version: 0x0102,
				ELFSHA256Prefix: "abcdef012", PanicReason: "abort() was called", ChecksumValid: true,
				Length: 3224, ELFOffset: 24, ELFLength: 3196},
		}
	}

	t.Run("CreateCoredump fills in the device; Get and List return what was stored", func(t *testing.T) {
		x, e := fix(t)
		m := x.model("ct_cd", nil)
		d := x.device(m, `{}`)
		c := dump(d, "")
		audit := []model.AuditEntry{{Kind: model.AuditCoredumpUploaded, Actor: model.DeviceActor("x"), Outcome: model.OutcomeSuccess}}
		evicted, err := e.Coredumps.CreateCoredump(x.ctx(), &c, 5, audit)
		mustNoErr(t, "CreateCoredump", err)
		if c.ID == 0 || c.DeviceModelID != m.ID || c.ModelCode != m.Code || c.ClientID != model.ClientID(m.Code, d.Key) || len(evicted) != 0 {
			t.Fatalf("created %+v, evicted %d", c, len(evicted))
		}
		got, err := e.Coredumps.GetCoredump(x.ctx(), c.ID)
		mustNoErr(t, "GetCoredump", err)
		if got.Info != c.Info || got.SHA256 != c.SHA256 || got.Size != c.Size || got.Status != c.Status ||
			!got.ReceivedAt.Equal(c.ReceivedAt) || got.ClientID != c.ClientID || got.Analysis != nil || got.Attempts != 0 {
			t.Errorf("got %+v, want %+v", got, c)
		}
		_, err = e.Coredumps.GetCoredump(x.ctx(), c.ID+1_000_000)
		wantErrIs(t, "GetCoredump of an unknown id", err, model.ErrNotFound)
		lost := dump(model.Device{ID: d.ID + 1_000_000}, "")
		_, err = e.Coredumps.CreateCoredump(x.ctx(), &lost, 5, nil)
		wantErrIs(t, "CreateCoredump of an unknown device", err, model.ErrNotFound)
	})

	t.Run("CreateCoredump keeps the newest keep per device; List pages newest first", func(t *testing.T) {
		x, e := fix(t)
		m := x.model("ct_cd", nil)
		d, other := x.device(m, `{}`), x.device(m, `{}`)
		o := dump(other, "")
		_, err := e.Coredumps.CreateCoredump(x.ctx(), &o, 3, nil)
		mustNoErr(t, "CreateCoredump", err)
		var ids []int64
		for i := range 5 {
			c := dump(d, "")
			evicted, err := e.Coredumps.CreateCoredump(x.ctx(), &c, 3, nil)
			mustNoErr(t, "CreateCoredump", err)
			ids = append(ids, c.ID)
			switch {
			case i < 3 && len(evicted) != 0:
				t.Fatalf("upload %d evicted %+v", i, evicted)
			case i >= 3 && (len(evicted) != 1 || evicted[0].ID != ids[i-3] || evicted[0].ModelCode != m.Code):
				t.Fatalf("upload %d evicted %+v, want dump %d", i, evicted, ids[i-3])
			}
		}
		page, err := e.Coredumps.ListCoredumps(x.ctx(), d.ID, 2, 0)
		mustNoErr(t, "ListCoredumps", err)
		if len(page.Coredumps) != 2 || page.Coredumps[0].ID != ids[4] || page.Coredumps[1].ID != ids[3] || page.NextBeforeID != ids[3] {
			t.Fatalf("first page %+v", page)
		}
		page, err = e.Coredumps.ListCoredumps(x.ctx(), d.ID, 2, page.NextBeforeID)
		mustNoErr(t, "ListCoredumps", err)
		if len(page.Coredumps) != 1 || page.Coredumps[0].ID != ids[2] || page.NextBeforeID != 0 {
			t.Fatalf("last page %+v", page)
		}
		if p, _ := e.Coredumps.ListCoredumps(x.ctx(), other.ID, 0, 0); len(p.Coredumps) != 1 {
			t.Errorf("the other device's dump: %+v", p)
		}
	})

	t.Run("ClaimCoredumps claims pending unclaimed dumps once; a claim ends; UpdateCoredump records the analysis", func(t *testing.T) {
		x, e := fix(t)
		m := x.model("ct_cd", nil)
		d := x.device(m, `{}`)
		var ids []int64
		for _, st := range []model.CoredumpStatus{model.CoredumpPending, model.CoredumpFailed, model.CoredumpPending} {
			c := dump(d, "")
			c.Status = st
			_, err := e.Coredumps.CreateCoredump(x.ctx(), &c, 10, nil)
			mustNoErr(t, "CreateCoredump", err)
			ids = append(ids, c.ID)
		}
		t0 := now()
		got, err := e.Coredumps.ClaimCoredumps(x.ctx(), t0, t0.Add(time.Minute), 10)
		mustNoErr(t, "ClaimCoredumps", err)
		if len(got) != 2 || got[0].ID != ids[0] || got[1].ID != ids[2] || got[0].Attempts != 1 ||
			got[0].ClaimedUntil == nil || !got[0].ClaimedUntil.Equal(t0.Add(time.Minute)) || got[0].ClientID == "" {
			t.Fatalf("claimed %+v", got)
		}
		if again, _ := e.Coredumps.ClaimCoredumps(x.ctx(), t0.Add(59*time.Second), t0.Add(2*time.Minute), 10); len(again) != 0 {
			t.Fatalf("claimed again within the claim: %+v", again)
		}
		at := t0.Add(time.Second)
		analysis := model.CoredumpAnalysis{Chip: "esp32c3", CrashedTask: "main", PanicReason: "abort()",
			Frames: []model.CoredumpFrame{{PC: 0x42009351, Function: "fail_once", File: "main.c", Line: 12}, {PC: 0x40380000}},
			Text:   "whole text", Notes: []string{"a note"}}
		upd, err := e.Coredumps.UpdateCoredump(x.ctx(), ids[0], func(c *model.Coredump) error {
			if c.Attempts != 1 || c.ModelCode != m.Code {
				t.Errorf("fn got %+v", c)
			}
			c.Status, c.Analysis, c.AnalysedAt, c.ClaimedUntil = model.CoredumpAnalysed, &analysis, &at, nil
			c.ELFSHA256, c.FirmwareVersion, c.Reason = "abcdef012"+"0000000000000000000000000000000000000000000000000000000", "1.2.3", ""
			c.Attempts, c.SHA256 = 99, "ignored"
			return nil
		})
		mustNoErr(t, "UpdateCoredump", err)
		read, err := e.Coredumps.GetCoredump(x.ctx(), ids[0])
		mustNoErr(t, "GetCoredump", err)
		for name, c := range map[string]model.Coredump{"UpdateCoredump": upd, "GetCoredump": read} {
			if c.Status != model.CoredumpAnalysed || c.Analysis == nil || c.Analysis.Text != "whole text" ||
				!slices.Equal(c.Analysis.Frames, analysis.Frames) || !slices.Equal(c.Analysis.Notes, analysis.Notes) ||
				c.FirmwareVersion != "1.2.3" || c.AnalysedAt == nil || !c.AnalysedAt.Equal(at) || c.ClaimedUntil != nil ||
				c.Attempts != 1 || c.SHA256 == "ignored" {
				t.Errorf("%s: %+v", name, c)
			}
		}
		// The second's claim ends.
		later, err := e.Coredumps.ClaimCoredumps(x.ctx(), t0.Add(time.Minute), t0.Add(3*time.Minute), 10)
		mustNoErr(t, "ClaimCoredumps", err)
		if len(later) != 1 || later[0].ID != ids[2] || later[0].Attempts != 2 {
			t.Fatalf("after the claim ended: %+v", later)
		}
	})

	t.Run("ClaimCoredumps from many workers at once claims each dump once", func(t *testing.T) {
		x, e := fix(t)
		m := x.model("ct_cd", nil)
		d := x.device(m, `{}`)
		for range 20 {
			c := dump(d, "")
			_, err := e.Coredumps.CreateCoredump(x.ctx(), &c, 100, nil)
			mustNoErr(t, "CreateCoredump", err)
		}
		t0 := now()
		var mu sync.Mutex
		seen := map[int64]int{}
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for {
					got, err := e.Coredumps.ClaimCoredumps(x.ctx(), t0, t0.Add(time.Hour), 1)
					if err != nil {
						t.Errorf("ClaimCoredumps: %v", err)
						return
					}
					if len(got) == 0 {
						return
					}
					mu.Lock()
					seen[got[0].ID]++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(seen) != 20 {
			t.Errorf("%d dumps claimed, want 20", len(seen))
		}
		for id, n := range seen {
			if n != 1 {
				t.Errorf("dump %d claimed %d times", id, n)
			}
		}
	})

	t.Run("RequeueCoredumps, CoredumpBlobInUse, DeleteCoredump, counts, and a device's deletion", func(t *testing.T) {
		x, e := fix(t)
		m, m2 := x.model("ct_cd", nil), x.model("ct_cd", nil)
		d, d2 := x.device(m, `{}`), x.device(m2, `{}`)
		mk := func(d model.Device, st model.CoredumpStatus, prefix string) model.Coredump {
			c := dump(d, "")
			c.Status, c.Info.ELFSHA256Prefix = st, prefix
			_, err := e.Coredumps.CreateCoredump(x.ctx(), &c, 100, nil)
			mustNoErr(t, "CreateCoredump", err)
			return c
		}
		elf := "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
		waiting := mk(d, model.CoredumpNoELF, "abcdef012")
		otherELF := mk(d, model.CoredumpNoELF, "999999999")
		otherModel := mk(d2, model.CoredumpNoELF, "abcdef012")
		failed := mk(d, model.CoredumpFailed, "abcdef012")
		n, err := e.Coredumps.RequeueCoredumps(x.ctx(), m.ID, elf)
		mustNoErr(t, "RequeueCoredumps", err)
		if n != 1 {
			t.Errorf("requeued %d, want 1", n)
		}
		for c, want := range map[int64]model.CoredumpStatus{waiting.ID: model.CoredumpPending, otherELF.ID: model.CoredumpNoELF, otherModel.ID: model.CoredumpNoELF, failed.ID: model.CoredumpFailed} {
			if got, _ := e.Coredumps.GetCoredump(x.ctx(), c); got.Status != want {
				t.Errorf("dump %d: %s, want %s", c, got.Status, want)
			}
		}
		counts, err := e.Coredumps.CoredumpCounts(x.ctx())
		mustNoErr(t, "CoredumpCounts", err)
		want := []ports.CoredumpCount{{ModelCode: m.Code, Status: model.CoredumpFailed, Count: 1},
			{ModelCode: m.Code, Status: model.CoredumpNoELF, Count: 1}, {ModelCode: m.Code, Status: model.CoredumpPending, Count: 1}}
		var mine []ports.CoredumpCount
		for _, c := range counts {
			if c.ModelCode == m.Code {
				mine = append(mine, c)
			}
		}
		if !slices.Equal(mine, want) {
			t.Errorf("counts %+v, want %+v", mine, want)
		}

		if in, err := e.Coredumps.CoredumpBlobInUse(x.ctx(), m.Code, waiting.SHA256); err != nil || !in {
			t.Errorf("blob in use: %v, %v", in, err)
		}
		if in, _ := e.Coredumps.CoredumpBlobInUse(x.ctx(), m2.Code, waiting.SHA256); in {
			t.Error("another model's namespace reported in use")
		}
		entry := []model.AuditEntry{{Kind: model.AuditCoredumpDeleted, Actor: model.SystemActor("t"), Outcome: model.OutcomeSuccess}}
		del, err := e.Coredumps.DeleteCoredump(x.ctx(), waiting.ID, entry)
		mustNoErr(t, "DeleteCoredump", err)
		if del.ID != waiting.ID || del.ModelCode != m.Code || del.SHA256 != waiting.SHA256 {
			t.Errorf("deleted %+v", del)
		}
		if in, _ := e.Coredumps.CoredumpBlobInUse(x.ctx(), m.Code, waiting.SHA256); in {
			t.Error("blob still in use after its only dump was deleted")
		}
		_, err = e.Coredumps.DeleteCoredump(x.ctx(), waiting.ID, entry)
		wantErrIs(t, "DeleteCoredump again", err, model.ErrNotFound)

		mustNoErr(t, "DeleteDevice", e.Devices.DeleteDevice(x.ctx(), d.ID, nil))
		_, err = e.Coredumps.GetCoredump(x.ctx(), otherELF.ID)
		wantErrIs(t, "a deleted device's dump", err, model.ErrNotFound)
	})

	t.Run("CrashGroups groups a model's analysed dumps by crash function and version", func(t *testing.T) {
		x, e := fix(t)
		m, other := x.model("ct_cd", nil), x.model("ct_cd", nil)
		d, od := x.device(m, `{}`), x.device(other, `{}`)
		t0 := now()
		analysed := func(d model.Device, at time.Time, fn, version string) int64 {
			c := dump(d, "")
			c.ReceivedAt = at
			_, err := e.Coredumps.CreateCoredump(x.ctx(), &c, 100, nil)
			mustNoErr(t, "CreateCoredump", err)
			if fn == "" {
				return c.ID // left pending
			}
			a := model.CoredumpAnalysis{Frames: []model.CoredumpFrame{{PC: 1, Function: "abort"}, {PC: 2, Function: fn}}}
			_, err = e.Coredumps.UpdateCoredump(x.ctx(), c.ID, func(c *model.Coredump) error {
				c.Status, c.Analysis, c.FirmwareVersion = model.CoredumpAnalysed, &a, version
				return nil
			})
			mustNoErr(t, "UpdateCoredump", err)
			return c.ID
		}
		analysed(d, t0.Add(-48*time.Hour), "fail_once", "1.0.0") // before since
		a1 := analysed(d, t0.Add(-time.Hour), "fail_once", "1.0.0")
		a2 := analysed(d, t0, "fail_once", "1.0.0")
		b := analysed(d, t0, "read_sensor", "1.0.0")
		c := analysed(d, t0, "fail_once", "1.0.1")
		analysed(d, t0, "", "")                // pending: not a crash group
		analysed(od, t0, "fail_once", "1.0.0") // another model
		got, err := e.Coredumps.CrashGroups(x.ctx(), m.ID, t0.Add(-24*time.Hour))
		mustNoErr(t, "CrashGroups", err)
		want := []model.CrashGroup{
			{Function: "fail_once", FirmwareVersion: "1.0.0", Count: 2, LastAt: t0, LastID: a2},
			{Function: "fail_once", FirmwareVersion: "1.0.1", Count: 1, LastAt: t0, LastID: c},
			{Function: "read_sensor", FirmwareVersion: "1.0.0", Count: 1, LastAt: t0, LastID: b},
		}
		if len(got) != len(want) {
			t.Fatalf("groups %+v, want %+v", got, want)
		}
		for i := range want {
			if got[i].Function != want[i].Function || got[i].FirmwareVersion != want[i].FirmwareVersion || got[i].Count != want[i].Count ||
				got[i].LastID != want[i].LastID || !got[i].LastAt.Equal(want[i].LastAt) {
				t.Errorf("group %d: %+v, want %+v", i, got[i], want[i])
			}
		}
		_ = a1
	})

	t.Run("FirmwareELFs: an upload's ELF is found once it is stored", func(t *testing.T) {
		x, e := fix(t)
		m := x.model("ct_cd", nil)
		elf := "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
		f1 := x.fw(m, "1.0.0", now())
		f1.ELFSHA256 = elf
		mustNoErr(t, "RecordFirmware", e.Firmware.RecordFirmware(x.ctx(), &f1, nil))
		f2 := x.fw(m, "1.0.1", now())
		mustNoErr(t, "RecordFirmware", e.Firmware.RecordFirmware(x.ctx(), &f2, nil))
		_, err := e.ELFs.FirmwareByELF(x.ctx(), m.ID, "abcdef012")
		wantErrIs(t, "FirmwareByELF before the ELF is stored", err, model.ErrNotFound)
		n, err := e.ELFs.MarkELFStored(x.ctx(), m.ID, elf)
		mustNoErr(t, "MarkELFStored", err)
		if n != 1 {
			t.Errorf("marked %d, want 1", n)
		}
		if n, _ := e.ELFs.MarkELFStored(x.ctx(), m.ID, elf); n != 0 {
			t.Errorf("marked again: %d", n)
		}
		for _, prefix := range []string{"abcdef012", elf, ""} {
			got, err := e.ELFs.FirmwareByELF(x.ctx(), m.ID, prefix)
			if err != nil || got.ID != f1.ID || !got.HasELF || got.ELFSHA256 != elf {
				t.Errorf("FirmwareByELF(%q): %+v, %v", prefix, got, err)
			}
		}
		_, err = e.ELFs.FirmwareByELF(x.ctx(), m.ID, "abcdef013")
		wantErrIs(t, "FirmwareByELF of another ELF", err, model.ErrNotFound)
		hist, err := e.Firmware.ListFirmware(x.ctx(), m.ID)
		mustNoErr(t, "ListFirmware", err)
		if len(hist) != 2 || hist[0].ELFSHA256 != "" || hist[0].HasELF || hist[1].ELFSHA256 != elf || !hist[1].HasELF {
			t.Errorf("history %+v", hist)
		}
	})
}
