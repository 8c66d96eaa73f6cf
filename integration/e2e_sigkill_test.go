package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/adapters/secretbox"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/integration/devicesim"
)

// espmdm killed with SIGKILL in the middle of a fleet's rotation, then
// started again on the same database, address and SECRET_KEY: no device
// stays PENDING beyond the timeout, the sealed previous secrets still open,
// every online device completes, and in grace mode no device was ever
// locked out (the simulator's lockout meter).

const (
	killFleet   = 12
	killSlots   = 3
	killTimeout = 8 * time.Second
	killTick    = time.Second
	// killReboot is how long the device that crashes after its fetch
	// stays down: past the kill, which comes within a few seconds.
	killReboot = 10 * time.Second
)

func TestE2ESigkillMidRotation(t *testing.T) {
	for _, mode := range []string{"grace", "restore"} {
		t.Run(mode, func(t *testing.T) { sigkillMidRotation(t, mode) })
	}
}

// pendingRow is a PENDING device as the database holds it.
type pendingRow struct {
	ID             int64  `bun:"id"`
	PreviousSecret []byte `bun:"previous_secret"`
	Generated      bool   `bun:"generated"`
}

func sigkillMidRotation(t *testing.T, mode string) {
	st := integration.Shared(t)
	env := rotationEnv(mode, killSlots)
	env["ROTATION_TIMEOUT_SECONDS"] = fmt.Sprint(int(killTimeout / time.Second))
	// One environment for both processes: the same database, address
	// (devices have BASE_URL in their partitions), SECRET_KEY, firmware
	// directory and MQTT client id.
	vars := serverVars(t, st, env)
	s1, kill := startProcess(t, vars)
	m := newModel(t, s1, nil)
	fleet, devs := newFleet(t, s1, mode, m.ID, killFleet)
	// Every device but the first follows the protocol, slowly enough (a
	// pause before each step) that the kill finds rotations in every
	// phase; the first is offline. The second crashes once right after
	// fetching its new secret and takes killReboot to boot again: its row
	// holds a generated, unconfirmed secret from then until the attempt
	// times out, so the kill below cannot miss a rotation in flight (a
	// slow device alone can confirm between the poll and the kill).
	for i, d := range devs {
		b := devicesim.Behaviour{Slow: 400 * time.Millisecond}
		switch i {
		case 0:
			b = devicesim.Behaviour{Offline: true}
		case 1:
			b.Crash, b.RebootDelay = devicesim.CrashAfterFetch, killReboot
		}
		d.sim.SetBehaviour(b)
	}
	stalled := devs[1].ID
	online := devs[1:]
	provisioned := map[int64]string{}
	for _, d := range devs {
		provisioned[d.ID] = d.sim.Secrets()[0]
	}

	db, err := postgres.Open(ctxT(t, 30*time.Second), vars["DATABASE_URL"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	states := func() map[string]int {
		var rows []struct {
			State string `bun:"rotation_state"`
			N     int    `bun:"n"`
		}
		if err := db.Bun().NewRaw("SELECT rotation_state, count(*) AS n FROM devices WHERE device_model_id = ? GROUP BY 1", m.ID).
			Scan(ctxT(t, 10*time.Second), &rows); err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for _, r := range rows {
			out[r.State] = r.N
		}
		return out
	}

	s1.do(http.MethodPost, "/api/rotation/trigger", s1.admin, nil).want(t, http.StatusAccepted, nil)
	// Kill once some devices completed and the crashed one holds a freshly
	// generated, unconfirmed secret (restore: its old one sealed in its
	// row; grace: kept by Keycloak as the rotated one).
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var inFlight int
		if err := db.Bun().NewRaw("SELECT count(*) FROM devices WHERE id = ? AND rotation_state = 'PENDING' AND new_secret_at IS NOT NULL", stalled).
			Scan(ctxT(t, 10*time.Second), &inFlight); err != nil {
			t.Fatal(err)
		}
		if c := states(); c["OK"] >= 2 && inFlight == 1 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no rotation with a generated secret in flight after a minute: %v", c)
		}
	}
	kill()
	killedAt := time.Now()
	atKill := states()

	// What the dead process left: PENDING devices, some with a generated
	// secret and their previous one sealed in the row. It opens with
	// SECRET_KEY and is the secret the device was provisioned with.
	var pending []pendingRow
	if err := db.Bun().NewRaw("SELECT id, previous_secret, new_secret_at IS NOT NULL AS generated FROM devices WHERE device_model_id = ? AND rotation_state = 'PENDING' ORDER BY id", m.ID).
		Scan(ctxT(t, 10*time.Second), &pending); err != nil {
		t.Fatal(err)
	}
	box, err := secretbox.NewFromString(vars["SECRET_KEY"])
	if err != nil {
		t.Fatal(err)
	}
	sealed, generated := 0, 0
	for _, p := range pending {
		if p.Generated {
			generated++
		}
		if p.PreviousSecret == nil {
			continue
		}
		sealed++
		plain, err := box.Open(p.PreviousSecret)
		if err != nil {
			t.Errorf("device %d: the sealed previous secret does not open after the kill: %v", p.ID, err)
			continue
		}
		if string(plain) != provisioned[p.ID] {
			t.Errorf("device %d: the sealed previous secret is not the one it was provisioned with", p.ID)
		}
		if strings.Contains(string(p.PreviousSecret), provisioned[p.ID]) {
			t.Errorf("device %d: previous_secret holds the secret in clear", p.ID)
		}
	}
	t.Logf("%s: killed with %v; %d PENDING (%d with a generated secret, %d sealed)", mode, atKill, len(pending), generated, sealed)
	// Restore mode seals the old secret before it generates; grace mode
	// leaves it to Keycloak (the rotated secret) and seals nothing when
	// its write-ahead intent was its own.
	if generated == 0 || (mode == "restore" && sealed == 0) {
		t.Fatal("the kill found no generated secret in flight (restore: no sealed previous secret): it did not hit a rotation mid-way")
	}

	// Down for a moment: devices in the middle of a step fail against a
	// closed port, as they would against a crashed server.
	time.Sleep(2 * time.Second)
	s2, _ := startProcess(t, vars)
	restarted := time.Now()
	t.Cleanup(func() {
		for _, d := range devs {
			s2.keep(d.sim.Secrets()...)
		}
	})
	t.Logf("%s: down for %s", mode, restarted.Sub(killedAt).Round(time.Millisecond))

	// Every online device completes; meanwhile no device is PENDING
	// longer than the timeout allows: an attempt begun before the kill must
	// end within a few ticks of the restart (the lease is taken over, the
	// first cycle times it out), one begun after within the timeout.
	slack := 3*killTick + 2*time.Second
	var worst time.Duration
	waitFleet(t, 90*time.Second, mode+" rotation after the restart", func() (bool, string) {
		var page struct {
			Devices []rotationDeviceDTO `json:"devices"`
		}
		s2.do(http.MethodGet, fmt.Sprintf("/api/devices?model_id=%d&limit=1000", m.ID), s2.admin, nil).want(t, http.StatusOK, &page)
		state := map[int64]string{}
		now := time.Now()
		for _, d := range page.Devices {
			state[d.ID] = d.RotationState
			if d.RotationState != "PENDING" || d.LastRotationAttemptAt == nil {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, *d.LastRotationAttemptAt)
			if err != nil {
				t.Fatal(err)
			}
			due := at.Add(killTimeout)
			if due.Before(restarted) {
				due = restarted
			}
			if over := now.Sub(due); over > worst {
				worst = over
			}
			if now.After(due.Add(slack)) {
				t.Fatalf("device %d PENDING since %s, %s past its timeout (restart %s)", d.ID, at.Format(time.RFC3339Nano),
					now.Sub(due).Round(time.Millisecond), restarted.Format(time.RFC3339Nano))
			}
		}
		var notOK []string
		for _, d := range online {
			if state[d.ID] != "OK" {
				notOK = append(notOK, fmt.Sprintf("%d:%s", d.ID, state[d.ID]))
			}
		}
		sort.Strings(notOK)
		return len(notOK) == 0, fmt.Sprintf("not OK: %v", notOK)
	})
	t.Logf("%s: every online device rotated %s after the restart; the longest a PENDING device outlived its timeout: %s (allowed %s)",
		mode, time.Since(restarted).Round(time.Millisecond), worst.Round(time.Millisecond), slack)

	rep, err := fleet.CheckAll(ctxT(t, time.Minute))
	if err != nil || rep.Unchecked > 0 {
		t.Fatalf("CheckAll: %v (%d unchecked: %v)", err, rep.Unchecked, rep.Err)
	}
	t.Logf("%s: CheckAll of %d devices: %d locked out now, %d lockouts during the run, %.1f locked-out device-seconds",
		mode, rep.Devices, len(rep.LockedOut), rep.Lockouts, rep.LockedOutSeconds)
	if len(rep.LockedOut) != 0 {
		t.Errorf("%s: devices locked out at the end: %v", mode, rep.LockedOut)
	}
	if mode == "grace" && (rep.Lockouts != 0 || rep.LockedOutSeconds != 0) {
		t.Errorf("grace: %d lockouts (%.1f device-seconds) across the kill, want none", rep.Lockouts, rep.LockedOutSeconds)
	}
	// A device whose ack the kill cut off (its request answered with EOF)
	// still holds the new secret as its next one until it next needs a
	// token; its next power-on promotes it (SPEC §4). Each is powered on
	// once before its slots are checked.
	for _, d := range online {
		if err := d.sim.Boot(ctxT(t, 30*time.Second)); err != nil {
			t.Fatalf("%s %s: power-on after the rotation: %v", mode, d.ClientID, err)
		}
	}
	for _, d := range online {
		chk, err := d.sim.CheckSecrets(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if want := (devicesim.SecretCheck{Provisioned: devicesim.Refused, Current: devicesim.Accepted}); chk != want {
			t.Errorf("%s %s: secrets %+v, want %+v", mode, d.ClientID, chk, want)
		}
	}
	// Nothing left half done: no sealed secret outlives its rotation.
	var left int
	if err := db.Bun().NewRaw("SELECT count(*) FROM devices WHERE device_model_id = ? AND rotation_state = 'OK' AND previous_secret IS NOT NULL", m.ID).
		Scan(context.Background(), &left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d completed devices still hold a sealed previous secret", left)
	}
}
