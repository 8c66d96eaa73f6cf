package ports

import (
	"context"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

// CampaignFilter narrows ListCampaigns. Nil fields do not filter.
type CampaignFilter struct {
	ModelID *int64
	State   *model.CampaignState
	// Limit and AfterID page as in DeviceFilter (ordered by ID).
	Limit   int
	AfterID int64
}

// CampaignPage is one page of campaigns; NextAfterID is 0 on the last
// page.
type CampaignPage struct {
	Campaigns   []model.Campaign
	NextAfterID int64
}

// MemberFilter narrows ListMembers to one campaign's members, optionally
// in one state, paged by device id.
type MemberFilter struct {
	CampaignID int64
	State      *model.MemberState
	Limit      int
	// AfterID is the cursor: members with a larger device id.
	AfterID int64
}

// MemberPage is one page of a campaign's members; NextAfterID is 0 on the
// last page.
type MemberPage struct {
	Members     []model.CampaignMember
	NextAfterID int64
}

// CampaignRepo persists firmware campaigns and their members (SPEC §16).
// Every method that the worker calls on a running campaign costs
// O(members of one wave) at most, never O(fleet): members are fixed at
// creation and found by (campaign, wave, state).
type CampaignRepo interface {
	// CreateCampaign inserts c (setting ID, CreatedAt, UpdatedAt and
	// Members) and, in the same transaction, its members: the active
	// devices of c.DeviceModelID whose tags include every one of
	// c.SelectorTags, each pending in wave waveOf(id, key) (given the
	// campaign's new ID), and appends audit (ModelID set to c's). A model
	// that has a running or paused campaign is a model.ErrConflict.
	CreateCampaign(ctx context.Context, c *model.Campaign, waveOf func(id int64, key string) int, audit []model.AuditEntry) error
	GetCampaign(ctx context.Context, id int64) (model.Campaign, error)
	// ActiveCampaign is the model's running or paused campaign, or
	// model.ErrNotFound.
	ActiveCampaign(ctx context.Context, modelID int64) (model.Campaign, error)
	// ListCampaigns is a page of campaigns by id.
	ListCampaigns(ctx context.Context, f CampaignFilter) (CampaignPage, error)
	// RunningCampaigns lists the running campaigns (for the worker).
	RunningCampaigns(ctx context.Context) ([]model.Campaign, error)
	// CampaignCounts counts the campaigns by state (every state present).
	CampaignCounts(ctx context.Context) (map[model.CampaignState]int, error)
	// ListMembers is a page of a campaign's members by device id, with Key
	// and ClientID set.
	ListMembers(ctx context.Context, f MemberFilter) (MemberPage, error)
	// WaveCounts counts a campaign's members by wave and state, one entry
	// per wave of the campaign (in wave order, zero counts included).
	WaveCounts(ctx context.Context, campaignID int64) ([]model.WaveCount, error)
	// WaveCount counts one wave's members by state (one grouped query on
	// the (campaign, wave, state) index).
	WaveCount(ctx context.Context, campaignID int64, wave int) (model.WaveCount, error)
	// WavePending reports whether any member of the wave is still pending
	// (one probe of the (campaign, wave, state) index: O(1), not O(wave)).
	WavePending(ctx context.Context, campaignID int64, wave int) (bool, error)
	// UpdateCampaign runs fn on the locked campaign and stores the state,
	// abort reason and times fn leaves, with the audit entries it returns,
	// in one transaction (fn may run again). Use StartWave, AbortCampaign
	// to change members.
	UpdateCampaign(ctx context.Context, id int64, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, error)
	// StartWave runs fn on the locked campaign (fn calls
	// model.Campaign.StartWave, which refuses a wave that is not the next
	// one: a wave is started once, even by two processes) and, in the
	// same transaction, assigns the target to the wave's pending members:
	// their AssignedAt is set to at, their device's assigned firmware
	// becomes the target, and each is owed a nudge. It returns the
	// campaign and how many members it assigned.
	StartWave(ctx context.Context, id int64, at time.Time, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, int, error)
	// AbortCampaign runs fn on the locked campaign (fn calls
	// model.Campaign.Abort) and, with rollback, in the same transaction
	// takes the target away from the failed members and the assigned
	// members still pending (their device's assigned firmware is cleared
	// where it is still the target) and owes each a rollback nudge. It
	// returns the campaign and how many members were rolled back.
	AbortCampaign(ctx context.Context, id int64, rollback bool, fn func(*model.Campaign) ([]model.AuditEntry, error)) (model.Campaign, int, error)
	// TimeOutMembers resolves the pending members of the wave assigned at
	// or before assignedBefore, in one statement: each becomes what
	// model.CampaignMember.TimeoutState says, resolved at at. It returns
	// how many it resolved.
	TimeOutMembers(ctx context.Context, c model.Campaign, wave int, assignedBefore, at time.Time) (int, error)
	// OwedNudges returns up to limit of the campaign's members owed a
	// nudge (ClientID set).
	OwedNudges(ctx context.Context, campaignID int64, limit int) ([]model.CampaignNudge, error)
	// NudgesSent marks these nudges (as OwedNudges returned them) as
	// sent; a member owed another nudge since (a rollback after its
	// assignment's nudge was read) stays owed.
	NudgesSent(ctx context.Context, campaignID int64, sent []model.CampaignNudge) error
	// ObserveReport finds the device's member row in its most recent
	// campaign, locks it, runs fn with that campaign and the member and
	// stores the member fn leaves (its reported fields and state). found is
	// false (and fn not run) for a device in no campaign.
	ObserveReport(ctx context.Context, deviceID int64, fn func(c model.Campaign, m *model.CampaignMember)) (c model.Campaign, m model.CampaignMember, found bool, err error)
}

// CampaignAdmin is the inbound port of campaigns (SPEC §16).
type CampaignAdmin interface {
	CreateCampaign(ctx context.Context, in NewCampaign) (model.Campaign, error)
	GetCampaign(ctx context.Context, id int64) (CampaignView, error)
	ListCampaigns(ctx context.Context, f CampaignFilter) (CampaignPage, error)
	ListCampaignMembers(ctx context.Context, f MemberFilter) (MemberPage, error)
	PauseCampaign(ctx context.Context, id int64) (CampaignView, error)
	ResumeCampaign(ctx context.Context, id int64) (CampaignView, error)
	AbortCampaign(ctx context.Context, id int64) (CampaignView, error)
}

// NewCampaign is the input of CampaignAdmin.CreateCampaign; nil optional
// fields take SPEC §16's defaults.
type NewCampaign struct {
	DeviceModelID        int64
	FirmwareSHA256       string
	SelectorTags         []string
	Waves                []int
	WaveSoakSeconds      *int64
	MaxFailureRatio      *float64
	DeviceTimeoutSeconds *int64
	RollbackOnAbort      *bool
	ReleaseOnComplete    *bool
}

// CampaignView is a campaign with its waves' counts.
type CampaignView struct {
	Campaign model.Campaign
	Waves    []model.WaveCount
}
