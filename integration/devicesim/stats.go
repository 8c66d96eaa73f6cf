package devicesim

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Stats are one device's counters.
type Stats struct {
	Nudges          int // rotation nudges received (not while offline)
	ConfigNotices   int // iotsupport/<client_id>/config received
	FirmwareNotices int // iotsupport/<model_code>/firmware and iotsupport/<client_id>/firmware received
	// DeviceFirmwareNotices are those on iotsupport/<client_id>/firmware
	// (a campaign's nudge to this device).
	DeviceFirmwareNotices int
	Ignored               int // messages ignored while offline
	// NotifiedFirmwareVersion is the version of the last firmware notice.
	NotifiedFirmwareVersion string

	Fetches        int // successful GET /iot/provisioning
	SecretsFetched int // distinct new secrets handed out by fetches
	Persists       int // slot writes (a secret written, promoted or erased)
	Promotions     int // next secrets promoted at login because only they were accepted
	Acks           int // acks answered 204
	Crashes        int
	Boots          int

	ConfigFetches       int // successful GET /iot/config
	FirmwareDownloads   int // 200 or 206 answers of GET /iot/firmware
	FirmwareNotModified int // 304 answers
	StateReports        int // POST /iot/state answered 204
	FirmwareChecks      int // GET /iot/firmware-version by Update
	FirmwareInstalls    int // images installed (booted pending verification)
	FirmwareRollbacks   int // installed images rolled back (Behaviour.BadFirmware)
	FirmwareFailures    int // images that did not verify (reported verify_failed)

	TokenRequests int // client-credentials requests
	TokenRefusals int // of which Keycloak refused the secret

	// Lockouts counts lockout periods begun; LockedOut is their total
	// length, including one still running.
	Lockouts  int
	LockedOut time.Duration
	// LockedOutNow: the last login found no secret that works.
	LockedOutNow bool

	// ConfirmLatencies are nudge → ack (Legacy: nudge → GET /iot/config
	// after the reboot), one per completed rotation.
	ConfirmLatencies []time.Duration

	Errors    int    // failed actions on events
	LastError string // the last of them (never holds a secret)
}

// Stats returns a copy of the device's counters.
func (d *Device) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.stats
	s.ConfirmLatencies = slices.Clone(d.stats.ConfirmLatencies)
	if !d.lockStart.IsZero() {
		s.LockedOut += time.Since(d.lockStart)
		s.LockedOutNow = true
	}
	return s
}

// EventKind names what happened to a device.
type EventKind string

// The event kinds.
const (
	EventNudge          EventKind = "nudge"
	EventConfigNotice   EventKind = "config_notice"
	EventFirmwareNotice EventKind = "firmware_notice"
	EventFetch          EventKind = "fetch"
	EventAck            EventKind = "ack"
	EventCrash          EventKind = "crash"
	EventBoot           EventKind = "boot"
	EventConfigFetch    EventKind = "config_fetch"
	EventLockoutBegin   EventKind = "lockout_begin"
	EventLockoutEnd     EventKind = "lockout_end"
	EventStateReport    EventKind = "state_report"
	EventOTAInstalled   EventKind = "ota_installed"   // an image installed; its boot follows
	EventOTARolledBack  EventKind = "ota_rolled_back" // an installed image rolled back
	EventOTAFailed      EventKind = "ota_failed"      // an image that did not verify
	EventError          EventKind = "error"
)

// Event is one thing that happened to a device. Err is set for EventError
// and never holds a secret.
type Event struct {
	At       time.Time
	ClientID string
	Kind     EventKind
	Err      error
}

// Percentiles summarises durations.
type Percentiles struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

// PercentilesOf returns the nearest-rank percentiles of ds.
func PercentilesOf(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return Percentiles{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: s[len(s)-1]}
}

// FleetStats sums the devices' counters.
type FleetStats struct {
	Devices        int
	Total          Stats // counters summed; ConfirmLatencies of every device
	ConfirmLatency Percentiles
	// LockedOutDevices counts devices with any locked-out time.
	LockedOutDevices int
}

// Stats sums every device's counters.
func (f *Fleet) Stats() FleetStats {
	var fs FleetStats
	for _, d := range f.Devices() {
		s := d.Stats()
		fs.Devices++
		t := &fs.Total
		t.Nudges += s.Nudges
		t.ConfigNotices += s.ConfigNotices
		t.FirmwareNotices += s.FirmwareNotices
		t.DeviceFirmwareNotices += s.DeviceFirmwareNotices
		t.Ignored += s.Ignored
		t.Fetches += s.Fetches
		t.SecretsFetched += s.SecretsFetched
		t.Persists += s.Persists
		t.Promotions += s.Promotions
		t.Acks += s.Acks
		t.Crashes += s.Crashes
		t.Boots += s.Boots
		t.ConfigFetches += s.ConfigFetches
		t.FirmwareDownloads += s.FirmwareDownloads
		t.FirmwareNotModified += s.FirmwareNotModified
		t.StateReports += s.StateReports
		t.FirmwareChecks += s.FirmwareChecks
		t.FirmwareInstalls += s.FirmwareInstalls
		t.FirmwareRollbacks += s.FirmwareRollbacks
		t.FirmwareFailures += s.FirmwareFailures
		t.TokenRequests += s.TokenRequests
		t.TokenRefusals += s.TokenRefusals
		t.Lockouts += s.Lockouts
		t.LockedOut += s.LockedOut
		t.ConfirmLatencies = append(t.ConfirmLatencies, s.ConfirmLatencies...)
		t.Errors += s.Errors
		if s.LockedOut > 0 {
			fs.LockedOutDevices++
		}
	}
	fs.ConfirmLatency = PercentilesOf(fs.Total.ConfirmLatencies)
	return fs
}

// Report is the outcome of CheckAll.
type Report struct {
	Devices int // devices checked
	// LockedOut are the client ids of devices that cannot get a token with
	// any secret they hold, now.
	LockedOut []string
	// LockedOutSeconds is the fleet's total locked-out device-seconds of
	// the run, including lockouts still running.
	LockedOutSeconds float64
	// Lockouts counts lockout periods begun during the run.
	Lockouts int
	// Unchecked are devices Keycloak gave no clear answer for (network
	// error, 5xx); Err is the first such error.
	Unchecked int
	Err       error
}

// CheckAll asks Keycloak, for every device (Concurrency at a time, offline
// ones too), whether a secret it holds (current, then next) is accepted,
// and reports the devices locked out and the fleet's locked-out
// device-seconds. A device found locked out starts its lockout meter; one
// found fine ends it.
func (f *Fleet) CheckAll(ctx context.Context) (Report, error) {
	var mu sync.Mutex
	var r Report
	f.forEach(ctx, func(ctx context.Context, d *Device) {
		ok, err := d.check(ctx)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			r.Unchecked++
			if r.Err == nil {
				r.Err = err
			}
		case !ok:
			r.LockedOut = append(r.LockedOut, d.clientID)
		}
		r.Devices++
	})
	slices.Sort(r.LockedOut)
	s := f.Stats()
	r.LockedOutSeconds = s.Total.LockedOut.Seconds()
	r.Lockouts = s.Total.Lockouts
	return r, ctx.Err()
}
