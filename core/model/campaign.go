package model

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"
)

// Firmware campaigns (SPEC §16): a staged rollout of one uploaded image to
// a fixed set of a model's devices, in waves, advancing only on confirmed
// boots and aborting itself on too many failures.
//
//	Pause   running -> paused
//	Resume  paused -> running
//	Abort   running, paused -> aborted
//	Complete running -> completed
//
// Completed and aborted campaigns are finished: every transition from them
// is a *CampaignError (a conflict, 409).

// CampaignState is where a campaign is.
type CampaignState string

// Campaign states.
const (
	CampaignRunning   CampaignState = "running"
	CampaignPaused    CampaignState = "paused"
	CampaignAborted   CampaignState = "aborted"
	CampaignCompleted CampaignState = "completed"
)

// CampaignStates lists the campaign states.
var CampaignStates = []CampaignState{CampaignRunning, CampaignPaused, CampaignAborted, CampaignCompleted}

// Valid reports whether s is one of CampaignStates.
func (s CampaignState) Valid() bool {
	switch s {
	case CampaignRunning, CampaignPaused, CampaignAborted, CampaignCompleted:
		return true
	}
	return false
}

// Finished reports whether s is completed or aborted.
func (s CampaignState) Finished() bool { return s == CampaignAborted || s == CampaignCompleted }

// MemberState is where a campaign's member is.
type MemberState string

// Member states. A member is pending from creation until its wave's
// assignment is resolved; resolved states are final.
const (
	MemberPending   MemberState = "pending"
	MemberSucceeded MemberState = "succeeded"
	MemberFailed    MemberState = "failed"
	MemberTimedOut  MemberState = "timed_out"
)

// MemberStates lists the member states.
var MemberStates = []MemberState{MemberPending, MemberSucceeded, MemberFailed, MemberTimedOut}

// Valid reports whether s is one of MemberStates.
func (s MemberState) Valid() bool {
	switch s {
	case MemberPending, MemberSucceeded, MemberFailed, MemberTimedOut:
		return true
	}
	return false
}

// Limits and defaults of a campaign's settings.
const (
	MaxCampaignWaves          = 20
	MaxSelectorTags           = MaxTags
	MaxWaveSoakSeconds        = 30 * 24 * 3600
	MaxDeviceTimeoutSeconds   = 30 * 24 * 3600
	DefaultWaveSoakSeconds    = 600
	DefaultDeviceTimeoutSecs  = 3600
	DefaultMaxFailureRatio    = 0.1
	DefaultRollbackOnAbort    = true
	DefaultReleaseOnComplete  = false
	MaxCampaignAbortReasonLen = 500
)

// DefaultWaves are a campaign's waves when it names none (SPEC §16).
func DefaultWaves() []int { return []int{1, 10, 50, 100} }

// Campaign is one staged rollout of a firmware image to a model's devices.
type Campaign struct {
	ID            int64
	DeviceModelID int64
	// FirmwareID, FirmwareSHA256 and FirmwareVersion are the target: an
	// upload of the model.
	FirmwareID      int64
	FirmwareSHA256  string
	FirmwareVersion string
	// SelectorTags: the members are the model's active devices whose tags
	// include all of them (all active devices when empty), fixed at
	// creation.
	SelectorTags []string
	// Waves are cumulative percentages of the members, strictly ascending,
	// ending at 100.
	Waves                []int
	WaveSoakSeconds      int64
	MaxFailureRatio      float64
	DeviceTimeoutSeconds int64
	RollbackOnAbort      bool
	ReleaseOnComplete    bool

	State CampaignState
	// CurrentWave is the index of the wave started last; -1 before the
	// first starts.
	CurrentWave int
	// WaveStartedAt holds when each started wave started (CurrentWave+1
	// entries).
	WaveStartedAt []time.Time
	// AbortReason says why an aborted campaign was aborted.
	AbortReason string
	// Members is how many devices the campaign has (fixed at creation).
	Members int
	// CreatedBy names the admin who created it.
	CreatedBy  string
	CreatedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt *time.Time
}

// CampaignError is a transition that the campaign's state does not allow.
// It matches ErrConflict.
type CampaignError struct {
	CampaignID int64
	Step       string
	State      CampaignState
}

func (e *CampaignError) Error() string {
	return fmt.Sprintf("campaign %d is %s: cannot %s it", e.CampaignID, e.State, e.Step)
}

// Unwrap makes the error a *ConflictError with the same text.
func (e *CampaignError) Unwrap() error { return &ConflictError{Reason: e.Error()} }

func (c *Campaign) refuse(step string) error {
	return &CampaignError{CampaignID: c.ID, Step: step, State: c.State}
}

// Pause stops a running campaign's progression.
func (c *Campaign) Pause(now time.Time) error {
	if c.State != CampaignRunning {
		return c.refuse("pause")
	}
	c.State, c.UpdatedAt = CampaignPaused, now
	return nil
}

// Resume lets a paused campaign progress again.
func (c *Campaign) Resume(now time.Time) error {
	if c.State != CampaignPaused {
		return c.refuse("resume")
	}
	c.State, c.UpdatedAt = CampaignRunning, now
	return nil
}

// Abort ends a running or paused campaign for reason.
func (c *Campaign) Abort(reason string, now time.Time) error {
	if c.State != CampaignRunning && c.State != CampaignPaused {
		return c.refuse("abort")
	}
	if len(reason) > MaxCampaignAbortReasonLen {
		reason = reason[:MaxCampaignAbortReasonLen]
	}
	c.State, c.AbortReason, c.UpdatedAt, c.FinishedAt = CampaignAborted, reason, now, &now
	return nil
}

// Complete ends a running campaign whose last wave is done.
func (c *Campaign) Complete(now time.Time) error {
	if c.State != CampaignRunning {
		return c.refuse("complete")
	}
	if c.CurrentWave != len(c.Waves)-1 {
		return &ConflictError{Reason: fmt.Sprintf("campaign %d: wave %d of %d is not the last", c.ID, c.CurrentWave, len(c.Waves))}
	}
	c.State, c.UpdatedAt, c.FinishedAt = CampaignCompleted, now, &now
	return nil
}

// StartWave records the start of wave w, which must be the one after the
// current; only a running campaign starts waves.
func (c *Campaign) StartWave(w int, now time.Time) error {
	if c.State != CampaignRunning {
		return c.refuse("start a wave of")
	}
	if w != c.CurrentWave+1 || w >= len(c.Waves) {
		return &ConflictError{Reason: fmt.Sprintf("campaign %d: wave %d cannot start after wave %d", c.ID, w, c.CurrentWave)}
	}
	c.CurrentWave = w
	c.WaveStartedAt = append(c.WaveStartedAt, now)
	c.UpdatedAt = now
	return nil
}

// LastWave reports whether the current wave is the last.
func (c Campaign) LastWave() bool { return c.CurrentWave == len(c.Waves)-1 }

// DeviceTimeout is DeviceTimeoutSeconds as a duration.
func (c Campaign) DeviceTimeout() time.Duration {
	return time.Duration(c.DeviceTimeoutSeconds) * time.Second
}

// WaveSoak is WaveSoakSeconds as a duration.
func (c Campaign) WaveSoak() time.Duration { return time.Duration(c.WaveSoakSeconds) * time.Second }

// Validate checks the settings an admin chooses (SPEC §16), returning a
// *ValidationError naming the first wrong one. The target is checked by
// the use case (it must be an upload of the model).
func (c Campaign) Validate() error {
	if c.DeviceModelID <= 0 {
		return Invalid("device_model_id", "must be a positive id")
	}
	if err := ValidateWaves(c.Waves); err != nil {
		return err
	}
	if err := ValidateSelectorTags(c.SelectorTags); err != nil {
		return err
	}
	if c.WaveSoakSeconds < 0 || c.WaveSoakSeconds > MaxWaveSoakSeconds {
		return Invalid("wave_soak_seconds", "must be between 0 and %d", MaxWaveSoakSeconds)
	}
	if c.DeviceTimeoutSeconds < 0 || c.DeviceTimeoutSeconds > MaxDeviceTimeoutSeconds {
		return Invalid("device_timeout_seconds", "must be between 0 and %d", MaxDeviceTimeoutSeconds)
	}
	// NaN fails both comparisons, so it is refused too.
	if !(c.MaxFailureRatio >= 0 && c.MaxFailureRatio <= 1) {
		return Invalid("max_failure_ratio", "must be between 0 and 1")
	}
	return nil
}

// ValidateWaves checks a campaign's waves: 1 to MaxCampaignWaves
// cumulative percentages, each 1..100, strictly ascending, ending at 100.
func ValidateWaves(waves []int) error {
	if len(waves) == 0 || len(waves) > MaxCampaignWaves {
		return Invalid("waves", "must have 1 to %d entries", MaxCampaignWaves)
	}
	for i, w := range waves {
		if w < 1 || w > 100 {
			return Invalid("waves", "entry %d (%d) must be between 1 and 100", i, w)
		}
		if i > 0 && w <= waves[i-1] {
			return Invalid("waves", "must be strictly ascending (entry %d is %d after %d)", i, w, waves[i-1])
		}
	}
	if waves[len(waves)-1] != 100 {
		return Invalid("waves", "must end at 100")
	}
	return nil
}

// ValidateSelectorTags checks a selector's tags: at most MaxSelectorTags,
// each matching TagPattern, none repeated.
func ValidateSelectorTags(tags []string) error {
	if len(tags) > MaxSelectorTags {
		return Invalid("selector.tags", "must have at most %d entries", MaxSelectorTags)
	}
	seen := make(map[string]bool, len(tags))
	for i, t := range tags {
		if !TagPattern.MatchString(t) {
			return Invalid("selector.tags", "entry %d must match %s", i, TagPattern)
		}
		if seen[t] {
			return Invalid("selector.tags", "entry %d repeats %q", i, t)
		}
		seen[t] = true
	}
	return nil
}

// WaveFraction is where a device key falls in campaign id's rollout: a
// number in [0, 1) from a SHA-256 of the campaign id and the key, so the
// same device always lands at the same place in the same campaign while
// different campaigns order the fleet differently.
func WaveFraction(campaignID int64, key string) float64 {
	h := sha256.New()
	h.Write([]byte(strconv.FormatInt(campaignID, 10)))
	h.Write([]byte{0})
	h.Write([]byte(key))
	sum := h.Sum(nil)
	// The top 53 bits: exactly representable in a float64.
	return float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
}

// WaveOf is the wave of fraction u for cumulative percentages waves: the
// first i with u*100 < waves[i] (the last wave when none, which a valid
// wave list never leaves).
func WaveOf(waves []int, u float64) int {
	for i, w := range waves {
		if u*100 < float64(w) {
			return i
		}
	}
	return len(waves) - 1
}

// WaveOfKey is the wave of device key in c.
func (c Campaign) WaveOfKey(key string) int { return WaveOf(c.Waves, WaveFraction(c.ID, key)) }

// CampaignMember is one device of a campaign.
type CampaignMember struct {
	CampaignID int64
	DeviceID   int64
	// Key and ClientID name the device (loaded with the member).
	Key      string
	ClientID string
	Wave     int
	State    MemberState
	// AssignedAt is when the member's wave assigned it the target; nil
	// before its wave starts.
	AssignedAt *time.Time
	ResolvedAt *time.Time
	// The member's latest state report since the campaign's creation
	// (empty before its first): its firmware version, OTA state and last
	// OTA attempt.
	ReportedVersion  string
	ReportedOTAState OTAState
	ReportedOTA      *OTAAttempt
	ReportedAt       *time.Time
}

// Observe records report r on the member and, when the member is pending
// and assigned in a campaign that is not finished, resolves it (SPEC §16):
// succeeded when r shows the target version with a confirmed boot
// (ota_state valid); failed when r's last OTA attempt targeted the target
// version and did not end installed. It reports whether the member's state
// changed.
func (m *CampaignMember) Observe(c Campaign, r StateReport) bool {
	m.ReportedVersion = r.FirmwareVersion
	m.ReportedOTAState = r.OTAState
	m.ReportedOTA = nil
	if r.OTA != nil {
		ota := *r.OTA
		m.ReportedOTA = &ota
	}
	at := r.At
	m.ReportedAt = &at
	if m.State != MemberPending || m.AssignedAt == nil || c.State.Finished() {
		return false
	}
	switch {
	case r.FirmwareVersion == c.FirmwareVersion && r.OTAState == OTAValid:
		m.State = MemberSucceeded
	case r.OTA != nil && r.OTA.Target == c.FirmwareVersion && r.OTA.Result != OTAInstalled:
		m.State = MemberFailed
	default:
		return false
	}
	m.ResolvedAt = &at
	return true
}

// TimeoutState is what a pending member becomes when its device timeout
// passes: failed when its latest report shows the target version still on
// probation (ota_state pending_verify), else timed out (a silent device is
// not a failure).
func (m CampaignMember) TimeoutState(c Campaign) MemberState {
	if m.ReportedVersion == c.FirmwareVersion && m.ReportedOTAState == OTAPendingVerify {
		return MemberFailed
	}
	return MemberTimedOut
}

// WaveCount is a wave's members by state.
type WaveCount struct {
	Wave      int
	Members   int
	Pending   int
	Succeeded int
	Failed    int
	TimedOut  int
	// LastSuccessAt is the latest ResolvedAt of a succeeded member; nil
	// when none succeeded.
	LastSuccessAt *time.Time
}

// Add counts n members in state s.
func (w *WaveCount) Add(s MemberState, n int) {
	w.Members += n
	switch s {
	case MemberPending:
		w.Pending += n
	case MemberSucceeded:
		w.Succeeded += n
	case MemberFailed:
		w.Failed += n
	case MemberTimedOut:
		w.TimedOut += n
	}
}

// OverFailureRatio reports whether the wave's failed members are more
// than ratio of its members (strictly: exactly at the ratio is not over).
func (w WaveCount) OverFailureRatio(ratio float64) bool {
	if w.Members == 0 {
		return false
	}
	// A division of two exact integers is correctly rounded, as is the
	// decimal ratio an admin wrote: a ratio exactly at the threshold
	// compares equal (failed > ratio*members would not: 0.29*100 is
	// 28.999999999999996).
	return float64(w.Failed)/float64(w.Members) > ratio
}

// Soaked reports whether wave w, started at started, has soaked for soak
// at now: no member is pending and soak has passed since its last success
// (or its start when none succeeded).
func (w WaveCount) Soaked(started time.Time, soak time.Duration, now time.Time) bool {
	if w.Pending > 0 {
		return false
	}
	from := started
	if w.LastSuccessAt != nil && w.LastSuccessAt.After(from) {
		from = *w.LastSuccessAt
	}
	return !now.Before(from.Add(soak))
}

// FailureReason is the abort reason of a wave over the failure ratio.
func (w WaveCount) FailureReason(ratio float64) string {
	return fmt.Sprintf("wave %d: %d of %d members failed, more than max_failure_ratio %g", w.Wave, w.Failed, w.Members, ratio)
}

// CampaignNudge is a device owed a message on its firmware topic: the
// firmware it should now run.
type CampaignNudge struct {
	CampaignID int64
	DeviceID   int64
	ClientID   string
	// Rollback is true when the device lost its assignment (an abort): it
	// should run its model's released firmware again.
	Rollback bool
}
