package mdm

import (
	"context"
	"errors"
	"fmt"

	"github.com/espmdm/espmdm/core/model"
)

// The campaign progression (SPEC §16), one tick at a time, run by one
// replica (the app holds a lease around it). Each tick works the running
// campaigns; for each it costs O(members of its current wave):
//
//  1. start wave 0 when none started;
//  2. send the nudges owed (assignments and rollbacks recorded by the
//     transactions that made them, so a crash between the commit and the
//     publish re-sends rather than forgets);
//  3. resolve the members whose device timeout passed (one statement);
//  4. count the current wave (one grouped query) and abort when its
//     failed members are over max_failure_ratio;
//  5. when no member is pending and the soak has passed since the wave's
//     last success (or its start), start the next wave, or complete.
//
// A wave's start is one transaction that checks it is the next one, so
// neither a restart nor a second process ever starts a wave twice or
// skips one.

// CampaignWake delivers a value when something this replica did may let a
// campaign progress before the next tick: a campaign created or resumed, a
// state report that resolved the last pending member of a running
// campaign's current wave. The worker ticks at once on it (when it holds
// the lease; otherwise the tick of the replica that does comes as usual).
// Wakes coalesce: one pending value stands for any number.
func (s *Service) CampaignWake() <-chan struct{} { return s.campaignWake }

func (s *Service) wakeCampaigns() {
	select {
	case s.campaignWake <- struct{}{}:
	default:
	}
}

// campaignWorkerName is the system actor of the progression's audit
// entries.
const campaignWorkerName = "campaign worker"

// nudgeBatch bounds the owed nudges read at once.
const nudgeBatch = 500

// CampaignEvent is one step of a campaign, reported to Deps.OnCampaign.
type CampaignEvent struct {
	Campaign model.Campaign
	// Step is "created", "wave_started", "timed_out", "paused", "resumed",
	// "aborted", "completed" or "nudged".
	Step string
	// Members is how many members the step concerned (assigned, timed
	// out, rolled back, nudged).
	Members int
}

func (s *Service) onCampaign(ctx context.Context, ev CampaignEvent) {
	if s.d.OnCampaign != nil {
		s.d.OnCampaign(ctx, ev)
	}
}

// CampaignTickReport says what one tick did.
type CampaignTickReport struct {
	Campaigns   int
	WavesStarts int
	Assigned    int
	TimedOut    int
	Nudged      int
	Aborted     int
	Completed   int
}

// RunCampaignTick advances every running campaign by one tick. An error
// of one campaign does not stop the others; they are joined.
func (s *Service) RunCampaignTick(ctx context.Context) (CampaignTickReport, error) {
	var rep CampaignTickReport
	repo, err := s.campaigns()
	if err != nil {
		return rep, err
	}
	ctx = model.WithActor(ctx, model.SystemActor(campaignWorkerName))
	running, err := repo.RunningCampaigns(ctx)
	if err != nil {
		return rep, fmt.Errorf("campaigns: list running: %w", err)
	}
	var errs []error
	for _, c := range running {
		rep.Campaigns++
		if err := s.advanceCampaign(ctx, c, &rep); err != nil {
			errs = append(errs, fmt.Errorf("campaign %d: %w", c.ID, err))
		}
	}
	return rep, errors.Join(errs...)
}

// advanceCampaign is one tick of running campaign c. It loops while a
// step finishes a wave at once (an empty wave with soak 0), at most once
// per wave.
func (s *Service) advanceCampaign(ctx context.Context, c model.Campaign, rep *CampaignTickReport) error {
	for range len(c.Waves) + 1 {
		if c.CurrentWave < 0 {
			next, err := s.startWave(ctx, c, 0, rep)
			if err != nil {
				return err
			}
			c = next
		}
		rep.Nudged += s.drainNudges(ctx, c)
		now := s.now()
		n, err := s.d.Campaigns.TimeOutMembers(ctx, c, c.CurrentWave, now.Add(-c.DeviceTimeout()), now)
		if err != nil {
			return fmt.Errorf("time out members: %w", err)
		}
		if n > 0 {
			rep.TimedOut += n
			s.onCampaign(ctx, CampaignEvent{Campaign: c, Step: "timed_out", Members: n})
		}
		wc, err := s.d.Campaigns.WaveCount(ctx, c.ID, c.CurrentWave)
		if err != nil {
			return fmt.Errorf("count wave %d: %w", c.CurrentWave, err)
		}
		if wc.OverFailureRatio(c.MaxFailureRatio) {
			aborted, err := s.abort(ctx, c.ID, wc.FailureReason(c.MaxFailureRatio), func(c model.Campaign) bool {
				return !c.State.Finished()
			})
			if errors.Is(err, errNoAbort) || errors.Is(err, model.ErrConflict) {
				return nil
			}
			if err != nil {
				return err
			}
			rep.Aborted++
			rep.Nudged += s.drainNudges(ctx, aborted)
			return nil
		}
		if !wc.Soaked(c.WaveStartedAt[c.CurrentWave], c.WaveSoak(), now) {
			return nil
		}
		if c.LastWave() {
			if err := s.completeCampaign(ctx, c); err != nil {
				return err
			}
			rep.Completed++
			return nil
		}
		next, err := s.startWave(ctx, c, c.CurrentWave+1, rep)
		if err != nil {
			return err
		}
		c = next
	}
	return nil
}

// startWave starts wave w of c: one transaction assigns the target to the
// wave's members and owes each a nudge; the nudges go out after it.
func (s *Service) startWave(ctx context.Context, c model.Campaign, w int, rep *CampaignTickReport) (model.Campaign, error) {
	now := s.now()
	next, n, err := s.d.Campaigns.StartWave(ctx, c.ID, now, func(c *model.Campaign) ([]model.AuditEntry, error) {
		if err := c.StartWave(w, now); err != nil {
			return nil, err
		}
		return s.audited(s.campaignEntry(ctx, model.AuditCampaignWaveStarted, *c,
			fmt.Sprintf("wave %d of %d (%d%%) started", w+1, len(c.Waves), c.Waves[w]))), nil
	})
	if err != nil {
		return model.Campaign{}, fmt.Errorf("start wave %d: %w", w, err)
	}
	rep.WavesStarts++
	rep.Assigned += n
	s.onCampaign(ctx, CampaignEvent{Campaign: next, Step: "wave_started", Members: n})
	rep.Nudged += s.drainNudges(ctx, next)
	return next, nil
}

// completeCampaign completes c; with release_on_complete its target
// becomes the model's released firmware first (so a crash between the
// two releases again, which changes nothing, before completing).
func (s *Service) completeCampaign(ctx context.Context, c model.Campaign) error {
	if c.ReleaseOnComplete {
		_, changed, err := s.d.Firmware.ReleaseFirmware(ctx, c.DeviceModelID, c.FirmwareSHA256, func(f model.Firmware, already bool) []model.AuditEntry {
			if already {
				return nil
			}
			e := s.entry(ctx, model.AuditFirmwareReleased, fmt.Sprintf("version %q, sha256 %s, released by campaign %d (release_on_complete)",
				f.Version, f.SHA256, c.ID))
			e.ModelID = c.DeviceModelID
			return s.audited(e)
		})
		if err != nil {
			return fmt.Errorf("release firmware %s: %w", c.FirmwareVersion, err)
		}
		if m, err := s.d.Models.GetModel(ctx, c.DeviceModelID); err == nil && changed {
			s.report(ctx, "notify firmware released", s.d.Notifier.FirmwareReleased(ctx, m.Code, c.FirmwareVersion))
		}
	}
	done, err := s.d.Campaigns.UpdateCampaign(ctx, c.ID, func(c *model.Campaign) ([]model.AuditEntry, error) {
		if err := c.Complete(s.now()); err != nil {
			return nil, err
		}
		detail := "completed"
		if c.ReleaseOnComplete {
			detail += ", its firmware released"
		}
		return s.audited(s.campaignEntry(ctx, model.AuditCampaignCompleted, *c, detail)), nil
	})
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	s.onCampaign(ctx, CampaignEvent{Campaign: done, Step: "completed"})
	return nil
}

// drainNudges sends c's owed nudges: the target to assigned members, the
// model's released firmware to rolled-back ones. A nudge is marked sent
// after the notifier queued it (a crash in between sends it twice, which
// a device takes as one). It stops at the first notifier failure (the
// rest stay owed for the next tick) and returns how many it sent.
func (s *Service) drainNudges(ctx context.Context, c model.Campaign) int {
	sent := 0
	var released *model.Firmware
	for {
		owed, err := s.d.Campaigns.OwedNudges(ctx, c.ID, nudgeBatch)
		if err != nil {
			s.report(ctx, "campaign: read owed nudges", err)
			return sent
		}
		if len(owed) == 0 {
			return sent
		}
		done := make([]model.CampaignNudge, 0, len(owed))
		var failed error
		for _, n := range owed {
			version, sha := c.FirmwareVersion, c.FirmwareSHA256
			if n.Rollback {
				if released == nil {
					f, err := s.releasedFirmware(ctx, c.DeviceModelID)
					switch {
					case errors.Is(err, model.ErrNotFound):
						f = model.Firmware{} // nothing to go back to: no nudge
					case err != nil:
						failed = err
					}
					released = &f
				}
				if failed != nil {
					break
				}
				version, sha = released.Version, released.SHA256
			}
			if version != "" {
				if err := s.d.Notifier.FirmwareAssigned(ctx, n.ClientID, version, sha); err != nil {
					failed = err
					break
				}
				sent++
			}
			done = append(done, n)
		}
		if err := s.d.Campaigns.NudgesSent(ctx, c.ID, done); err != nil {
			s.report(ctx, "campaign: mark nudges sent", err)
			return sent
		}
		if failed != nil {
			s.report(ctx, "campaign: nudge", failed)
			return sent
		}
		if len(owed) < nudgeBatch {
			if sent > 0 {
				s.onCampaign(ctx, CampaignEvent{Campaign: c, Step: "nudged", Members: sent})
			}
			return sent
		}
	}
}

// releasedFirmware is the model's released firmware: what a device
// without an assignment is offered.
func (s *Service) releasedFirmware(ctx context.Context, modelID int64) (model.Firmware, error) {
	f, err := s.d.Firmware.ReleasedFirmware(ctx, modelID)
	if err != nil {
		return model.Firmware{}, fmt.Errorf("released firmware of device model %d: %w", modelID, err)
	}
	return f, nil
}

// CampaignStats counts campaigns by state, for the metrics.
func (s *Service) CampaignStats(ctx context.Context) (map[model.CampaignState]int, error) {
	repo, err := s.campaigns()
	if err != nil {
		return nil, err
	}
	return repo.CampaignCounts(ctx)
}
