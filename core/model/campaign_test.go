package model_test

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

var c0 = time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)

func validCampaign() model.Campaign {
	return model.Campaign{
		ID: 7, DeviceModelID: 1, FirmwareID: 3, FirmwareVersion: "2.0.0",
		Waves: model.DefaultWaves(), WaveSoakSeconds: 600, MaxFailureRatio: 0.1,
		DeviceTimeoutSeconds: 3600, RollbackOnAbort: true, State: model.CampaignRunning, CurrentWave: -1,
	}
}

func TestCampaignValidate(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*model.Campaign)
		field string // "" when valid
	}{
		{"defaults", func(*model.Campaign) {}, ""},
		{"one wave of 100", func(c *model.Campaign) { c.Waves = []int{100} }, ""},
		{"no waves", func(c *model.Campaign) { c.Waves = nil }, "waves"},
		{"not ending at 100", func(c *model.Campaign) { c.Waves = []int{10, 50} }, "waves"},
		{"descending", func(c *model.Campaign) { c.Waves = []int{50, 10, 100} }, "waves"},
		{"repeated", func(c *model.Campaign) { c.Waves = []int{10, 10, 100} }, "waves"},
		{"zero", func(c *model.Campaign) { c.Waves = []int{0, 100} }, "waves"},
		{"over 100", func(c *model.Campaign) { c.Waves = []int{50, 101} }, "waves"},
		{"too many", func(c *model.Campaign) {
			c.Waves = nil
			for i := 1; i <= 21; i++ {
				c.Waves = append(c.Waves, 100-21+i)
			}
		}, "waves"},
		{"ratio 0", func(c *model.Campaign) { c.MaxFailureRatio = 0 }, ""},
		{"ratio 1", func(c *model.Campaign) { c.MaxFailureRatio = 1 }, ""},
		{"ratio negative", func(c *model.Campaign) { c.MaxFailureRatio = -0.01 }, "max_failure_ratio"},
		{"ratio over 1", func(c *model.Campaign) { c.MaxFailureRatio = 1.01 }, "max_failure_ratio"},
		{"ratio NaN", func(c *model.Campaign) { c.MaxFailureRatio = math.NaN() }, "max_failure_ratio"},
		{"soak 0", func(c *model.Campaign) { c.WaveSoakSeconds = 0 }, ""},
		{"soak negative", func(c *model.Campaign) { c.WaveSoakSeconds = -1 }, "wave_soak_seconds"},
		{"soak too long", func(c *model.Campaign) { c.WaveSoakSeconds = model.MaxWaveSoakSeconds + 1 }, "wave_soak_seconds"},
		{"timeout negative", func(c *model.Campaign) { c.DeviceTimeoutSeconds = -1 }, "device_timeout_seconds"},
		{"timeout too long", func(c *model.Campaign) { c.DeviceTimeoutSeconds = model.MaxDeviceTimeoutSeconds + 1 }, "device_timeout_seconds"},
		{"tags", func(c *model.Campaign) { c.SelectorTags = []string{"eu", "floor:2", "a.b-c_d"} }, ""},
		{"tag upper case", func(c *model.Campaign) { c.SelectorTags = []string{"EU"} }, "selector.tags"},
		{"tag empty", func(c *model.Campaign) { c.SelectorTags = []string{""} }, "selector.tags"},
		{"tag repeated", func(c *model.Campaign) { c.SelectorTags = []string{"eu", "eu"} }, "selector.tags"},
		{"too many tags", func(c *model.Campaign) {
			for i := 0; i <= model.MaxSelectorTags; i++ {
				c.SelectorTags = append(c.SelectorTags, fmt.Sprintf("t%d", i))
			}
		}, "selector.tags"},
		{"no model", func(c *model.Campaign) { c.DeviceModelID = 0 }, "device_model_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validCampaign()
			tt.edit(&c)
			err := c.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			var ve *model.ValidationError
			if !errors.As(err, &ve) || ve.Field != tt.field {
				t.Fatalf("Validate: %v, want a validation error on %s", err, tt.field)
			}
		})
	}
}

func TestCampaignTransitions(t *testing.T) {
	type step struct {
		name string
		do   func(*model.Campaign) error
	}
	pause := step{"pause", func(c *model.Campaign) error { return c.Pause(c0) }}
	resume := step{"resume", func(c *model.Campaign) error { return c.Resume(c0) }}
	abort := step{"abort", func(c *model.Campaign) error { return c.Abort("by hand", c0) }}
	complete := step{"complete", func(c *model.Campaign) error { return c.Complete(c0) }}
	start := step{"start", func(c *model.Campaign) error { return c.StartWave(c.CurrentWave+1, c0) }}
	tests := []struct {
		from model.CampaignState
		step step
		want model.CampaignState // "" when refused
	}{
		{model.CampaignRunning, pause, model.CampaignPaused},
		{model.CampaignRunning, resume, ""},
		{model.CampaignRunning, abort, model.CampaignAborted},
		{model.CampaignRunning, complete, model.CampaignCompleted},
		{model.CampaignRunning, start, model.CampaignRunning},
		{model.CampaignPaused, pause, ""},
		{model.CampaignPaused, resume, model.CampaignRunning},
		{model.CampaignPaused, abort, model.CampaignAborted},
		{model.CampaignPaused, complete, ""},
		{model.CampaignPaused, start, ""},
		{model.CampaignAborted, pause, ""},
		{model.CampaignAborted, resume, ""},
		{model.CampaignAborted, abort, ""},
		{model.CampaignAborted, complete, ""},
		{model.CampaignAborted, start, ""},
		{model.CampaignCompleted, pause, ""},
		{model.CampaignCompleted, resume, ""},
		{model.CampaignCompleted, abort, ""},
		{model.CampaignCompleted, complete, ""},
		{model.CampaignCompleted, start, ""},
	}
	for _, tt := range tests {
		t.Run(string(tt.from)+" "+tt.step.name, func(t *testing.T) {
			c := validCampaign()
			c.State = tt.from
			if tt.step.name == "complete" {
				c.CurrentWave = len(c.Waves) - 1
			}
			err := tt.step.do(&c)
			if tt.want == "" {
				var ce *model.CampaignError
				if !errors.As(err, &ce) || !errors.Is(err, model.ErrConflict) {
					t.Fatalf("%s from %s: %v, want a *CampaignError matching ErrConflict", tt.step.name, tt.from, err)
				}
				if c.State != tt.from {
					t.Fatalf("state %s after a refusal, want %s", c.State, tt.from)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s from %s: %v", tt.step.name, tt.from, err)
			}
			if c.State != tt.want {
				t.Fatalf("state %s, want %s", c.State, tt.want)
			}
		})
	}
}

func TestCampaignWaveOrder(t *testing.T) {
	c := validCampaign()
	if err := c.Complete(c0); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("Complete before the last wave: %v, want a conflict", err)
	}
	if err := c.StartWave(1, c0); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("StartWave(1) before wave 0: %v, want a conflict", err)
	}
	for w := range c.Waves {
		if err := c.StartWave(w, c0.Add(time.Duration(w)*time.Minute)); err != nil {
			t.Fatalf("StartWave(%d): %v", w, err)
		}
	}
	if got, want := len(c.WaveStartedAt), len(c.Waves); got != want {
		t.Fatalf("WaveStartedAt has %d entries, want %d", got, want)
	}
	if err := c.StartWave(len(c.Waves), c0); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("StartWave past the last: %v, want a conflict", err)
	}
	if err := c.Complete(c0); err != nil || c.FinishedAt == nil {
		t.Fatalf("Complete after the last wave: %v (finished %v)", err, c.FinishedAt)
	}
}

func TestWaveOf(t *testing.T) {
	waves := []int{1, 10, 50, 100}
	tests := []struct {
		u    float64
		want int
	}{
		{0, 0}, {0.0099, 0}, {0.01, 1}, {0.0999, 1}, {0.1, 2}, {0.4999, 2}, {0.5, 3}, {0.9999999, 3},
	}
	for _, tt := range tests {
		if got := model.WaveOf(waves, tt.u); got != tt.want {
			t.Errorf("WaveOf(%v, %v) = %d, want %d", waves, tt.u, got, tt.want)
		}
	}
}

// TestWaveSpread checks that the stable hash spreads 10,000 keys over the
// waves in their shares: each wave's fraction of the keys is within 2
// percentage points of the fleet (absolute, not relative to the wave's
// share) of its width.
func TestWaveSpread(t *testing.T) {
	const n = 10000
	for _, waves := range [][]int{{1, 10, 50, 100}, {5, 25, 100}, {100}, {33, 66, 100}} {
		for _, id := range []int64{1, 42, 1 << 40} {
			counts := make([]int, len(waves))
			for i := 0; i < n; i++ {
				key := fmt.Sprintf("%08x", uint32(i)*2654435761)
				counts[model.WaveOf(waves, model.WaveFraction(id, key))]++
			}
			prev := 0
			for i, w := range waves {
				share := float64(w - prev)
				got := 100 * float64(counts[i]) / n
				if math.Abs(got-share) > 2 {
					t.Errorf("campaign %d waves %v: wave %d has %.2f%% of the keys, want %v%% ± 2 points", id, waves, i, got, share)
				}
				prev = w
			}
		}
	}
}

func TestWaveFractionStable(t *testing.T) {
	a, b := model.WaveFraction(5, "abcd1234"), model.WaveFraction(5, "abcd1234")
	if a != b || a < 0 || a >= 1 {
		t.Fatalf("WaveFraction: %v then %v, want one value in [0,1)", a, b)
	}
	if model.WaveFraction(6, "abcd1234") == a {
		t.Fatalf("another campaign puts the key at the same place %v", a)
	}
}

func TestMemberObserve(t *testing.T) {
	c := validCampaign()
	assigned := c0
	report := func(version string, st model.OTAState, ota *model.OTAAttempt) model.StateReport {
		return model.StateReport{FirmwareVersion: version, OTAState: st, OTA: ota, At: c0.Add(time.Minute)}
	}
	tests := []struct {
		name     string
		member   model.CampaignMember
		state    model.CampaignState
		r        model.StateReport
		want     model.MemberState
		resolved bool
	}{
		{"confirmed boot", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignRunning,
			report("2.0.0", model.OTAValid, &model.OTAAttempt{Target: "2.0.0", Result: model.OTAInstalled}), model.MemberSucceeded, true},
		{"on probation", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignRunning,
			report("2.0.0", model.OTAPendingVerify, nil), model.MemberPending, false},
		{"no ota_state", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignRunning,
			report("2.0.0", "", nil), model.MemberPending, false},
		{"rolled back", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignRunning,
			report("1.0.0", model.OTAValid, &model.OTAAttempt{Target: "2.0.0", Result: model.OTARolledBack}), model.MemberFailed, true},
		{"download failed", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignRunning,
			report("1.0.0", model.OTAValid, &model.OTAAttempt{Target: "2.0.0", Result: model.OTADownloadFailed}), model.MemberFailed, true},
		{"another target failed", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignRunning,
			report("1.0.0", model.OTAValid, &model.OTAAttempt{Target: "1.5.0", Result: model.OTARolledBack}), model.MemberPending, false},
		{"old version", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignRunning,
			report("1.0.0", model.OTAValid, nil), model.MemberPending, false},
		{"not assigned yet", model.CampaignMember{State: model.MemberPending}, model.CampaignRunning,
			report("2.0.0", model.OTAValid, nil), model.MemberPending, false},
		{"after an abort", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignAborted,
			report("2.0.0", model.OTAValid, nil), model.MemberPending, false},
		{"while paused", model.CampaignMember{State: model.MemberPending, AssignedAt: &assigned}, model.CampaignPaused,
			report("2.0.0", model.OTAValid, nil), model.MemberSucceeded, true},
		{"resolved is final", model.CampaignMember{State: model.MemberSucceeded, AssignedAt: &assigned}, model.CampaignRunning,
			report("1.0.0", model.OTAValid, &model.OTAAttempt{Target: "2.0.0", Result: model.OTARolledBack}), model.MemberSucceeded, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.State = tt.state
			m := tt.member
			changed := m.Observe(c, tt.r)
			if m.State != tt.want || changed != tt.resolved {
				t.Fatalf("Observe: state %s changed %v, want %s %v", m.State, changed, tt.want, tt.resolved)
			}
			if (m.ResolvedAt != nil) != (tt.resolved || tt.member.ResolvedAt != nil) {
				t.Fatalf("ResolvedAt %v with resolved %v", m.ResolvedAt, tt.resolved)
			}
			if m.ReportedVersion != tt.r.FirmwareVersion || m.ReportedAt == nil {
				t.Fatalf("the report is not recorded: version %q at %v", m.ReportedVersion, m.ReportedAt)
			}
		})
	}
}

func TestMemberTimeoutState(t *testing.T) {
	c := validCampaign()
	tests := []struct {
		version string
		st      model.OTAState
		want    model.MemberState
	}{
		{"", "", model.MemberTimedOut},
		{"1.0.0", model.OTAValid, model.MemberTimedOut},
		{"2.0.0", model.OTAPendingVerify, model.MemberFailed},
		{"1.0.0", model.OTAPendingVerify, model.MemberTimedOut},
	}
	for _, tt := range tests {
		m := model.CampaignMember{State: model.MemberPending, ReportedVersion: tt.version, ReportedOTAState: tt.st}
		if got := m.TimeoutState(c); got != tt.want {
			t.Errorf("TimeoutState after %q/%q = %s, want %s", tt.version, tt.st, got, tt.want)
		}
	}
}

func TestOverFailureRatio(t *testing.T) {
	tests := []struct {
		failed, members int
		ratio           float64
		want            bool
	}{
		{1, 10, 0.1, false}, // exactly at the threshold
		{2, 10, 0.1, true},  // just above
		{29, 100, 0.29, false},
		{30, 100, 0.29, true},
		{3, 30, 0.1, false},
		{4, 30, 0.1, true},
		{0, 0, 0, false},
		{1, 1, 0, true},
		{0, 5, 0, false},
		{5, 5, 1, false},
		{100, 1000, 0.1, false},
		{101, 1000, 0.1, true},
	}
	for _, tt := range tests {
		w := model.WaveCount{Failed: tt.failed, Members: tt.members}
		if got := w.OverFailureRatio(tt.ratio); got != tt.want {
			t.Errorf("%d of %d failed over %v: %v, want %v", tt.failed, tt.members, tt.ratio, got, tt.want)
		}
	}
}

func TestSoaked(t *testing.T) {
	soak := 10 * time.Minute
	success := c0.Add(5 * time.Minute)
	tests := []struct {
		name string
		w    model.WaveCount
		now  time.Time
		want bool
	}{
		{"pending", model.WaveCount{Pending: 1, LastSuccessAt: &success}, c0.Add(time.Hour), false},
		{"soaking after the last success", model.WaveCount{Succeeded: 1, LastSuccessAt: &success}, c0.Add(14 * time.Minute), false},
		{"soaked after the last success", model.WaveCount{Succeeded: 1, LastSuccessAt: &success}, c0.Add(15 * time.Minute), true},
		{"none succeeded: from the start", model.WaveCount{TimedOut: 1}, c0.Add(10 * time.Minute), true},
		{"none succeeded, soaking", model.WaveCount{TimedOut: 1}, c0.Add(9 * time.Minute), false},
	}
	for _, tt := range tests {
		if got := tt.w.Soaked(c0, soak, tt.now); got != tt.want {
			t.Errorf("%s: Soaked = %v, want %v", tt.name, got, tt.want)
		}
	}
}
