package mdm_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// hourly fires at every full hour (UTC): a ports.Schedule for the tests.
type hourly struct{}

func (hourly) Next(after time.Time) (time.Time, error) {
	return after.Truncate(time.Hour).Add(time.Hour), nil
}
func (hourly) String() string { return "0 * * * *" }

// renv is a Service in rotation mode mode (resolved), with fakes.
type renv struct {
	*env
	sched *portstest.Schedule
}

func newRotationEnv(t *testing.T, mode model.RotationMode, opts ...option) *renv {
	t.Helper()
	sched := portstest.NewSchedule()
	opts = append([]option{func(d *mdm.Deps, c *mdm.Config) {
		d.SecretBox = portstest.NewSecretBox()
		d.Schedule = hourly{}
		d.ScheduleRepo = sched
		c.RotationMode = mode
		c.RotationConcurrency = 3
		c.RotationTimeout = 5 * time.Minute
		c.RotationRetry = time.Hour
	}}, opts...)
	e := &renv{env: newEnv(t, opts...), sched: sched}
	if mode == model.RotationRestore {
		e.idp.SetRotationPolicy(model.RotationPolicy{}) // a realm without the feature
	}
	got, _, err := e.svc.InitRotation(t.Context())
	if err != nil {
		t.Fatalf("InitRotation(%s): %v", mode, err)
	}
	if got != mode {
		t.Fatalf("InitRotation(%s) = %s", mode, got)
	}
	return e
}

func (e *renv) get(t *testing.T, id int64) model.Device {
	t.Helper()
	d, err := e.store.GetDevice(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (e *renv) secret(t *testing.T, d model.Device) string {
	t.Helper()
	s, err := e.idp.ClientSecret(context.Background(), d.ClientID())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *renv) rotate(t *testing.T, d model.Device) {
	t.Helper()
	if res, err := e.svc.RotateDevice(t.Context(), d.ID); err != nil || res != ports.RotateQueued {
		t.Fatalf("RotateDevice = %q, %v; want queued", res, err)
	}
}

func (e *renv) fetch(t *testing.T, d model.Device) string {
	t.Helper()
	p, err := e.svc.FetchCredentials(t.Context(), e.get(t, d.ID))
	if err != nil {
		t.Fatalf("FetchCredentials: %v", err)
	}
	if p.ClientID != d.ClientID() || p.DeviceKey != d.Key || p.TokenURL == "" {
		t.Fatalf("FetchCredentials fields = %+v", p)
	}
	return p.ClientSecret
}

func (e *renv) ack(t *testing.T, d model.Device, secret string) error {
	t.Helper()
	return e.svc.AckCredentials(t.Context(), e.get(t, d.ID), digest(secret))
}

func (e *renv) state(t *testing.T, d model.Device) model.RotationState {
	t.Helper()
	return e.get(t, d.ID).RotationState
}

func (e *renv) cycle(t *testing.T) ports.CycleReport {
	t.Helper()
	rep, err := e.svc.RunRotationCycle(t.Context())
	if err != nil {
		t.Fatalf("RunRotationCycle: %v", err)
	}
	return rep
}

func (e *renv) nudges(clientID string) int {
	n := 0
	for _, s := range e.notifier.Sent() {
		if s.Kind == "rotation" && s.ClientID == clientID {
			n++
		}
	}
	return n
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func wantState(t *testing.T, e *renv, d model.Device, want model.RotationState) {
	t.Helper()
	if got := e.state(t, d); got != want {
		t.Fatalf("device %d state = %s, want %s", d.ID, got, want)
	}
}

func wantAuth(t *testing.T, e *renv, d model.Device, secret string, want bool) {
	t.Helper()
	if got := e.idp.Authenticates(d.ClientID(), secret); got != want {
		t.Fatalf("secret %.6s… authenticates = %t, want %t", secret, got, want)
	}
}

func TestRotationGraceFetchAckCompletes(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	old := e.secret(t, d)

	e.rotate(t, d)
	wantState(t, e, d, model.RotationPending)
	if n := e.nudges(d.ClientID()); n != 1 {
		t.Fatalf("nudges after start = %d, want 1", n)
	}
	fresh := e.fetch(t, d)
	if fresh == old {
		t.Fatal("fetch handed out the old secret during a rotation")
	}
	// Zero lockout: both secrets work until the ack.
	wantAuth(t, e, d, old, true)
	wantAuth(t, e, d, fresh, true)
	// Every later fetch of the attempt returns the same secret, generated once.
	if again := e.fetch(t, d); again != fresh {
		t.Fatal("a second fetch generated another secret")
	}
	if n := len(e.idpCalls("RegenerateSecret")); n != 1 {
		t.Fatalf("RegenerateSecret calls = %d, want 1", n)
	}
	// Keycloak keeps the old secret, as the rotated one: the generation
	// of a covered client neither reads the client nor seals anything.
	if got := e.get(t, d.ID); got.PreviousSecret != nil || got.GenerationIntentAt != nil || !got.ClientCovered {
		t.Fatalf("after the generation: sealed %v, intent %v, covered %t; want none, none, true",
			got.PreviousSecret != nil, got.GenerationIntentAt, got.ClientCovered)
	}
	if n := len(e.idpCalls("CoveredSecrets")) + len(e.idpCalls("Secrets")) + len(e.idpCalls("CoverClient")); n != 0 {
		t.Fatalf("the generation read the client %d times, want 0 (its intent was its own)", n)
	}

	// The iat rule does not complete in grace mode: the old secret still works.
	claims := model.DeviceClaims{ClientID: d.ClientID(), ModelCode: d.ModelCode, Key: d.Key, IssuedAt: e.clock.Now().Add(10 * time.Second)}
	if _, err := e.svc.DeviceConfig(t.Context(), e.get(t, d.ID), claims); err != nil {
		t.Fatal(err)
	}
	wantState(t, e, d, model.RotationPending)

	if err := e.ack(t, d, old); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("ack with the old secret's digest = %v, want ErrConflict", err)
	}
	wantState(t, e, d, model.RotationPending)

	e.clock.Advance(30 * time.Second)
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatalf("ack: %v", err)
	}
	got := e.get(t, d.ID)
	if got.RotationState != model.RotationOK || got.PreviousSecret != nil || got.NewSecretAt != nil {
		t.Fatalf("after ack: state %s, sealed %v, new_secret_at %v", got.RotationState, got.PreviousSecret, got.NewSecretAt)
	}
	if got.LastRotationCompletedAt == nil || !got.LastRotationCompletedAt.Equal(e.clock.Now()) {
		t.Fatalf("last_rotation_completed_at = %v, want %v", got.LastRotationCompletedAt, e.clock.Now())
	}
	if got.SecretCreatedAt == nil || !got.SecretCreatedAt.Before(e.clock.Now()) {
		t.Fatalf("secret_created_at = %v, want the generation time", got.SecretCreatedAt)
	}
	// Completion invalidated the rotated secret.
	wantAuth(t, e, d, old, false)
	wantAuth(t, e, d, fresh, true)
	// A repeated ack is idempotent; another digest is a conflict.
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatalf("repeated ack: %v", err)
	}
	if err := e.ack(t, d, "something else"); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("ack of another secret after completion = %v, want ErrConflict", err)
	}
	// Outside a rotation the fetch returns the current credentials, generating nothing.
	if cur := e.fetch(t, d); cur != fresh {
		t.Fatal("fetch outside a rotation did not return the current secret")
	}
	if n := len(e.idpCalls("RegenerateSecret")); n != 1 {
		t.Fatalf("RegenerateSecret calls = %d, want 1", n)
	}
}

func TestRotationAckValidation(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	for _, bad := range []string{"", "abc", strings.Repeat("g", 64), strings.Repeat("a", 65)} {
		wantValidation(t, e.svc.AckCredentials(t.Context(), d, bad), "client_secret_sha256")
	}
	// No rotation: 409.
	if err := e.ack(t, d, e.secret(t, d)); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("ack without a rotation = %v, want ErrConflict", err)
	}
	// Upper-case hex is the same digest.
	e.rotate(t, d)
	fresh := e.fetch(t, d)
	if err := e.svc.AckCredentials(t.Context(), e.get(t, d.ID), strings.ToUpper(digest(fresh))); err != nil {
		t.Fatalf("ack in upper-case hex: %v", err)
	}
}

func TestRotationRestoreIATRule(t *testing.T) {
	e := newRotationEnv(t, model.RotationRestore)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	old := e.secret(t, d)
	e.rotate(t, d)
	fresh := e.fetch(t, d)
	// Restore mode: the old secret stops working at generation.
	wantAuth(t, e, d, old, false)
	wantAuth(t, e, d, fresh, true)
	gen := *e.get(t, d.ID).NewSecretAt

	claims := func(iat time.Time) model.DeviceClaims {
		return model.DeviceClaims{ClientID: d.ClientID(), ModelCode: d.ModelCode, Key: d.Key, IssuedAt: iat}
	}
	// A token of the same second may have come from the old secret.
	if _, err := e.svc.DeviceConfig(t.Context(), e.get(t, d.ID), claims(gen.Truncate(time.Second).Add(999*time.Millisecond))); err != nil {
		t.Fatal(err)
	}
	wantState(t, e, d, model.RotationPending)
	cfg, err := e.svc.DeviceConfig(t.Context(), e.get(t, d.ID), claims(gen.Truncate(time.Second).Add(time.Second)))
	if err != nil || string(cfg) != `{}` {
		t.Fatalf("DeviceConfig = %s, %v", cfg, err)
	}
	wantState(t, e, d, model.RotationOK)
	// The ack after an iat completion is idempotent too.
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatalf("ack after the iat completion: %v", err)
	}
}

// idpNow is the fake identity provider's clock in whole seconds: the iat
// of a token it would issue now.
func (e *renv) idpNow(t *testing.T) time.Time {
	t.Helper()
	now, err := e.idp.Now(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return now
}

// config is the device's GET /iot/config with a token issued at iat.
func (e *renv) config(t *testing.T, d model.Device, iat time.Time) {
	t.Helper()
	c := model.DeviceClaims{ClientID: d.ClientID(), ModelCode: d.ModelCode, Key: d.Key, IssuedAt: iat}
	if _, err := e.svc.DeviceConfig(t.Context(), e.get(t, d.ID), c); err != nil {
		t.Fatalf("DeviceConfig: %v", err)
	}
}

// The iat rule compares the token's iat, Keycloak's clock, with Keycloak's
// own record of when the old secret stopped working, not with espmdm's
// clock (review finding F3: with Keycloak 2 s ahead, a token of the old
// secret confirmed a rotation whose fetch answer the device never got; 2 s
// behind, a device following the reviewed design never completed).
func TestRotationRestoreIATRuleUnderClockSkew(t *testing.T) {
	t.Run("Keycloak 2 s ahead: a token of the old secret proves nothing", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationRestore, withIdPSkew(2*time.Second))
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		old := e.secret(t, d)
		e.rotate(t, d)
		e.clock.Advance(500 * time.Millisecond)
		oldIAT := e.idpNow(t)  // the device's token, taken with the old secret just before the fetch
		fresh := e.fetch(t, d) // its answer is lost: the device holds the old secret only
		wantAuth(t, e, d, old, false)
		e.clock.Advance(300 * time.Millisecond)
		e.config(t, d, oldIAT)
		wantState(t, e, d, model.RotationPending)
		// A token issued in a later second of Keycloak's clock can only
		// have come from the new secret.
		e.clock.Advance(time.Second)
		e.config(t, d, e.idpNow(t))
		wantState(t, e, d, model.RotationOK)
		wantAuth(t, e, d, fresh, true)
	})
	t.Run("Keycloak 2 s behind: the reviewed design's steps still complete", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationRestore, withIdPSkew(-2*time.Second))
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		e.rotate(t, d)
		e.clock.Advance(500 * time.Millisecond)
		fresh := e.fetch(t, d)                   // fetch, overwrite the only secret,
		e.clock.Advance(1100 * time.Millisecond) // reboot (into a later second),
		wantAuth(t, e, d, fresh, true)
		e.config(t, d, e.idpNow(t)) // token, GET /iot/config
		wantState(t, e, d, model.RotationOK)
	})
}

// Restore mode on a realm whose policy keeps the old secret as the rotated
// one: it works until espmdm invalidates it, after the generation, so only
// a token issued after the invalidation (by Keycloak's clock) proves the
// new secret, however long the invalidation took.
func TestRotationRestoreIATRuleWaitsForTheRotatedSecretsEnd(t *testing.T) {
	e := newRotationEnv(t, model.RotationRestore)
	e.idp.SetRotationPolicy(portstest.DefaultRotationPolicy())
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	if _, err := e.idp.CoverClient(t.Context(), d.ClientID()); err != nil {
		t.Fatal(err)
	}
	old := e.secret(t, d)
	e.rotate(t, d)
	var oldIAT time.Time
	e.idp.Hook = func(op, _ string) error {
		if op == "InvalidateRotatedSecret" {
			// Keycloak is slow: the old secret, still the rotated one,
			// gets a token a second after the generation.
			e.clock.Advance(1500 * time.Millisecond)
			if e.idp.Authenticates(d.ClientID(), old) {
				oldIAT = time.Unix(e.clock.Now().Unix(), 0)
			}
		}
		return nil
	}
	e.clock.Advance(900 * time.Millisecond)
	e.fetch(t, d)
	e.idp.Hook = nil
	if oldIAT.IsZero() {
		t.Fatal("the old secret did not work until the invalidation: the policy is not in force")
	}
	wantAuth(t, e, d, old, false)
	e.config(t, d, oldIAT)
	wantState(t, e, d, model.RotationPending)
	e.clock.Advance(time.Second)
	e.config(t, d, e.idpNow(t))
	wantState(t, e, d, model.RotationOK)
}

// restart is another start of espmdm on the same database and realm: a new
// Service over e's fakes, its config changed by change, its mode resolved.
func (e *renv) restart(t *testing.T, change func(*mdm.Config)) model.RotationMode {
	t.Helper()
	cfg := e.cfg
	change(&cfg)
	e.svc = mdm.New(e.deps, cfg)
	mode, _, err := e.svc.InitRotation(t.Context())
	if err != nil {
		t.Fatalf("InitRotation after the restart: %v", err)
	}
	return mode
}

// recordMode records the mode in force and checks what was recorded before
// and the unconfirmed rotations counted.
func (e *renv) recordMode(t *testing.T, wantPrev model.RotationMode, wantUnconfirmed int) {
	t.Helper()
	prev, n, err := e.svc.RecordRotationMode(t.Context())
	if err != nil || prev != wantPrev || n != wantUnconfirmed {
		t.Fatalf("RecordRotationMode = %q, %d, %v; want %q, %d", prev, n, err, wantPrev, wantUnconfirmed)
	}
}

// Rotations left unconfirmed by a mode that is no longer in force (review
// finding F5): one generated in grace mode keeps the old secret valid, so
// no token proves the new one, also once auto resolves to restore (a
// changed ROTATION_GRACE, or a ROTATION_CRON that trips the expiration
// check); only the ack completes it, and the completion ends the old
// secret. One generated in restore mode has ended the old secret, so its
// timeout restores it also under grace. A start whose mode differs from
// the last one in force says how many rotations are unconfirmed.
func TestRotationUnconfirmedAcrossAModeSwitch(t *testing.T) {
	t.Run("grace, then restore", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationGrace, withConfig(func(c *mdm.Config) { c.RotationMode = model.RotationAuto }))
		e.recordMode(t, "", 0)
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		old := e.secret(t, d)
		e.rotate(t, d)
		fresh := e.fetch(t, d) // the answer is lost, or the device goes away
		e.clock.Advance(6 * time.Minute)
		e.cycle(t)
		wantState(t, e, d, model.RotationTimeout)
		wantAuth(t, e, d, old, true)
		wantAuth(t, e, d, fresh, true)

		if mode := e.restart(t, func(c *mdm.Config) { c.RotationGrace = 48 * time.Hour }); mode != model.RotationRestore {
			t.Fatalf("auto with a grace that differs from the policy's resolved to %s, want restore", mode)
		}
		e.recordMode(t, model.RotationGrace, 1)
		e.recordMode(t, model.RotationRestore, 0) // the next start: no change
		e.clock.Advance(time.Hour)
		e.cycle(t) // the retry, in restore mode
		wantState(t, e, d, model.RotationPending)
		if again := e.fetch(t, d); again != fresh {
			t.Fatal("the retry generated again while the grace generation is unconfirmed")
		}
		// A token issued long after the generation proves nothing: the old
		// secret still works, and may be all the device holds.
		e.clock.Advance(time.Minute)
		e.config(t, d, e.idpNow(t))
		wantState(t, e, d, model.RotationPending)
		wantAuth(t, e, d, old, true)
		// The ack completes it, and the completion ends the old secret.
		if err := e.ack(t, d, fresh); err != nil {
			t.Fatal(err)
		}
		wantState(t, e, d, model.RotationOK)
		wantAuth(t, e, d, old, false)
		wantAuth(t, e, d, fresh, true)
	})
	t.Run("grace, then restore: the timeout restores the rotated secret", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationGrace, withConfig(func(c *mdm.Config) { c.RotationMode = model.RotationAuto }))
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		old := e.secret(t, d)
		e.rotate(t, d)
		fresh := e.fetch(t, d) // nothing sealed: Keycloak keeps the old secret
		if mode := e.restart(t, func(c *mdm.Config) { c.RotationGrace = 48 * time.Hour }); mode != model.RotationRestore {
			t.Fatalf("mode %s, want restore", mode)
		}
		e.clock.Advance(6 * time.Minute)
		if rep := e.cycle(t); rep.TimedOut != 1 {
			t.Fatalf("timed out %d, want 1", rep.TimedOut)
		}
		wantState(t, e, d, model.RotationTimeout)
		wantAuth(t, e, d, old, true)
		wantAuth(t, e, d, fresh, false)
		if got := e.get(t, d.ID); got.Generated() || got.ClientCovered {
			t.Fatalf("after the restore: generated %t, covered %t; want neither", got.Generated(), got.ClientCovered)
		}
	})
	t.Run("restore, then grace", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationRestore)
		e.recordMode(t, "", 0)
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		old := e.secret(t, d)
		e.rotate(t, d)
		e.fetch(t, d) // the old secret ends here; the answer is lost
		wantAuth(t, e, d, old, false)
		e.idp.SetRotationPolicy(portstest.DefaultRotationPolicy()) // the feature and the policy arrive
		if mode := e.restart(t, func(c *mdm.Config) { c.RotationMode = model.RotationGrace }); mode != model.RotationGrace {
			t.Fatalf("mode %s, want grace", mode)
		}
		e.recordMode(t, model.RotationRestore, 1)
		e.clock.Advance(6 * time.Minute)
		e.cycle(t)
		wantState(t, e, d, model.RotationTimeout)
		wantAuth(t, e, d, old, true) // restored: the device holds it
	})
}

// A device that boots on its next secret promotes it and acks it (the
// README's firmware steps, SPEC §4): when its config request completed the
// rotation by the iat rule first, and even when the next rotation has
// been queued since, the ack of that secret is 204 again, until a newer
// secret is generated.
func TestRotationAckOfACompletedRotationIsIdempotent(t *testing.T) {
	e := newRotationEnv(t, model.RotationRestore)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	e.rotate(t, d)
	s1 := e.fetch(t, d)
	e.clock.Advance(1500 * time.Millisecond)
	e.config(t, d, e.idpNow(t)) // the reboot's config request
	wantState(t, e, d, model.RotationOK)
	if err := e.ack(t, d, s1); err != nil {
		t.Fatalf("ack after the iat completion: %v", err)
	}
	e.rotate(t, d) // the next rotation starts before the device's ack arrives
	wantState(t, e, d, model.RotationPending)
	if err := e.ack(t, d, s1); err != nil {
		t.Fatalf("ack of the completed rotation's secret while the next is pending = %v, want 204", err)
	}
	wantState(t, e, d, model.RotationPending)
	s2 := e.fetch(t, d)
	if err := e.ack(t, d, s1); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("ack of the previous secret after a new generation = %v, want ErrConflict", err)
	}
	if err := e.ack(t, d, s2); err != nil {
		t.Fatal(err)
	}
}

func TestRotationRestoreAckCompletes(t *testing.T) {
	e := newRotationEnv(t, model.RotationRestore)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	e.rotate(t, d)
	fresh := e.fetch(t, d)
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatal(err)
	}
	wantState(t, e, d, model.RotationOK)
	if n := len(e.idpCalls("InvalidateRotatedSecret")); n != 1 {
		t.Fatalf("restore mode invalidates the rotated secret right after generating: %d calls, want 1", n)
	}
}

func TestRotationGraceTimeoutKeepsBothSecretsAndRetriesWithTheSameSecret(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	old := e.secret(t, d)
	e.rotate(t, d)
	fresh := e.fetch(t, d) // the device fetches, then goes silent

	e.clock.Advance(5*time.Minute + time.Second)
	if rep := e.cycle(t); rep.TimedOut != 1 {
		t.Fatalf("cycle timed out %d, want 1", rep.TimedOut)
	}
	wantState(t, e, d, model.RotationTimeout)
	// A timeout changes nothing in the identity provider.
	wantAuth(t, e, d, old, true)
	wantAuth(t, e, d, fresh, true)

	// Not retried before ROTATION_RETRY after the attempt.
	e.clock.Advance(30 * time.Minute)
	if rep := e.cycle(t); rep.Started != 0 {
		t.Fatalf("retried after 30 min: started %d", rep.Started)
	}
	e.clock.Advance(30 * time.Minute)
	if rep := e.cycle(t); rep.Started != 1 {
		t.Fatalf("not retried after the retry delay: started %d", rep.Started)
	}
	wantState(t, e, d, model.RotationPending)
	if n := e.nudges(d.ClientID()); n != 2 {
		t.Fatalf("nudges = %d, want one per attempt (2)", n)
	}
	// The retry hands out the same secret: a second generation would end
	// the old secret's grace.
	if again := e.fetch(t, d); again != fresh {
		t.Fatal("the retry generated a new secret")
	}
	if n := len(e.idpCalls("RegenerateSecret")); n != 1 {
		t.Fatalf("RegenerateSecret calls = %d, want 1", n)
	}
	wantAuth(t, e, d, old, true)
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatal(err)
	}
	wantState(t, e, d, model.RotationOK)
	wantAuth(t, e, d, old, false)
}

// A device that fetched its new secret and then asks for its config
// without confirming has rebooted between fetch and ack: it is nudged again
// at once, once per attempt, instead of waiting for the timeout and retry.
func TestRotationRenudgesADeviceThatRebootedBeforeItsAck(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	claims := model.DeviceClaims{ClientID: d.ClientID(), ModelCode: d.ModelCode, Key: d.Key, IssuedAt: e.clock.Now()}
	config := func() {
		t.Helper()
		if _, err := e.svc.DeviceConfig(t.Context(), e.get(t, d.ID), claims); err != nil {
			t.Fatal(err)
		}
	}
	config() // not in rotation: no nudge
	e.rotate(t, d)
	config() // nudged, not fetched yet: in its rotation steps or offline
	if n := e.nudges(d.ClientID()); n != 1 {
		t.Fatalf("nudges before the fetch = %d, want 1", n)
	}
	fresh := e.fetch(t, d)
	config() // the reboot
	if n := e.nudges(d.ClientID()); n != 2 {
		t.Fatalf("nudges after the config request of a device that fetched = %d, want 2", n)
	}
	config()
	if n := e.nudges(d.ClientID()); n != 2 {
		t.Fatalf("nudges after a second config request = %d, want 2 (once per attempt)", n)
	}
	if again := e.fetch(t, d); again != fresh {
		t.Fatal("the fetch after the second nudge handed out another secret")
	}
	// The next attempt may be nudged again once.
	e.clock.Advance(5*time.Minute + time.Second)
	e.cycle(t)
	e.clock.Advance(time.Hour)
	if rep := e.cycle(t); rep.Started != 1 {
		t.Fatalf("retry not started: %+v", rep)
	}
	e.fetch(t, d)
	config()
	config()
	if n := e.nudges(d.ClientID()); n != 4 {
		t.Fatalf("nudges after the retry's fetch and two config requests = %d, want 4", n)
	}
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatal(err)
	}
	config()
	if n := e.nudges(d.ClientID()); n != 4 {
		t.Fatalf("nudges after the ack = %d, want 4", n)
	}
}

func TestRotationGraceLateAckAfterTimeoutCompletes(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	e.rotate(t, d)
	fresh := e.fetch(t, d)
	e.clock.Advance(6 * time.Minute)
	e.cycle(t)
	wantState(t, e, d, model.RotationTimeout)
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatalf("late ack: %v", err)
	}
	wantState(t, e, d, model.RotationOK)
}

func TestRotationRestoreTimeoutRestoresTheOldSecret(t *testing.T) {
	e := newRotationEnv(t, model.RotationRestore)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	old := e.secret(t, d)
	e.rotate(t, d)
	fresh := e.fetch(t, d)
	e.clock.Advance(6 * time.Minute)
	if rep := e.cycle(t); rep.TimedOut != 1 {
		t.Fatalf("timed out %d, want 1", rep.TimedOut)
	}
	wantState(t, e, d, model.RotationTimeout)
	wantAuth(t, e, d, old, true)
	wantAuth(t, e, d, fresh, false)
	if got := e.get(t, d.ID); got.PreviousSecret != nil || got.NewSecretAt != nil || got.SecretSHA256 != "" {
		t.Fatalf("restore left rotation data: %+v", got)
	}
	// The unconfirmed secret can no longer be acked.
	if err := e.ack(t, d, fresh); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("ack of the restored-away secret = %v, want ErrConflict", err)
	}
	// The retry generates afresh.
	e.clock.Advance(time.Hour)
	e.cycle(t)
	wantState(t, e, d, model.RotationPending)
	if again := e.fetch(t, d); again == fresh || again == old {
		t.Fatal("the retry in restore mode did not generate a fresh secret")
	}
}

// events records the rotation events a Service reports.
type events struct {
	mu  sync.Mutex
	got []mdm.RotationEvent
}

func (ev *events) option() option {
	return func(d *mdm.Deps, _ *mdm.Config) {
		d.OnRotation = func(_ context.Context, e mdm.RotationEvent) {
			ev.mu.Lock()
			defer ev.mu.Unlock()
			ev.got = append(ev.got, e)
		}
	}
}

func (ev *events) of(kind mdm.RotationEventKind) []mdm.RotationEvent {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	var out []mdm.RotationEvent
	for _, e := range ev.got {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// A device whose identity-provider client is gone (deleted by an admin, a
// realm restored from a backup) cannot have its old secret restored: its
// restore-mode timeout still ends the attempt, says so, and frees the slot
// (review finding F2: the identity provider's not-found was taken for the
// device row's, and the device stayed PENDING for good, holding a slot).
func TestRotationRestoreTimeoutWithTheClientGone(t *testing.T) {
	var ev events
	e := newRotationEnv(t, model.RotationRestore, withAudit(), ev.option(),
		withConfig(func(c *mdm.Config) { c.RotationConcurrency = 1 }))
	m := e.model(t, "m1", "")
	gone, next := e.device(t, m, `{}`), e.device(t, m, `{}`)
	e.rotate(t, gone)
	e.fetch(t, gone) // generated and sealed: there is something to restore
	e.rotate(t, next)
	wantState(t, e, next, model.RotationQueued)
	if err := e.idp.DeleteClient(t.Context(), gone.ClientID()); err != nil {
		t.Fatal(err)
	}

	e.clock.Advance(6 * time.Minute)
	rep, err := e.svc.RunRotationCycle(t.Context())
	if err != nil || rep.TimedOut != 1 {
		t.Fatalf("cycle = %+v, %v; want the attempt timed out", rep, err)
	}
	wantState(t, e, gone, model.RotationTimeout)
	if got := e.get(t, gone.ID); got.PreviousSecret != nil || got.NewSecretAt != nil || got.SecretSHA256 != "" {
		t.Errorf("rotation data kept for a client that is gone: %+v", got)
	}
	// The slot went to the next device.
	wantState(t, e, next, model.RotationPending)
	if e.idp.Has(gone.ClientID()) {
		t.Error("the timeout recreated the client")
	}
	// Said in the events (metrics, log) and the audit log.
	tos := ev.of(mdm.EventTimeout)
	if len(tos) != 1 || !tos[0].ClientMissing || tos[0].Restored || tos[0].DeviceID != gone.ID {
		t.Errorf("timeout events = %+v, want one for device %d with ClientMissing", tos, gone.ID)
	}
	x := entriesOf(e, model.AuditRotationTimeout)
	if len(x) != 1 || x[0].Outcome != model.OutcomeFailure || !strings.Contains(x[0].Detail, "client is missing") {
		t.Errorf("rotation_timeout audit entries = %+v, want one failure saying the client is missing", x)
	}
	if len(entriesOf(e, model.AuditSecretRestored)) != 0 {
		t.Error("a restore was audited though nothing was restored")
	}
	// A device row deleted meanwhile is still no error.
	if err := e.store.DeleteDevice(t.Context(), next.ID, nil); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(6 * time.Minute)
	if rep := e.cycle(t); rep.TimedOut != 0 {
		t.Errorf("cycle after the row was deleted = %+v", rep)
	}
}

func TestTriggerRotationOfOneModel(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	m1, m2 := e.model(t, "m1", ""), e.model(t, "m2", "")
	e.device(t, m1, `{}`)
	e.device(t, m1, `{}`)
	other := e.device(t, m2, `{}`)
	n, err := e.svc.TriggerRotation(t.Context(), m1.ID)
	if err != nil || n != 2 {
		t.Fatalf("TriggerRotation(m1) = %d, %v; want 2", n, err)
	}
	if got := e.get(t, other.ID); got.RotationState != model.RotationOK {
		t.Errorf("device of m2: state %s after m1's trigger, want OK", got.RotationState)
	}
	if _, err := e.svc.TriggerRotation(t.Context(), 999999); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("TriggerRotation(unknown model) = %v, want ErrNotFound", err)
	}
}

func TestRotationSlotsBoundAndRefillFromTheCompletingRequest(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	m := e.model(t, "m1", "")
	var devs []model.Device
	for range 7 {
		devs = append(devs, e.device(t, m, `{}`))
		e.clock.Advance(time.Second) // distinct secret ages: oldest first
	}
	n, err := e.svc.TriggerRotation(t.Context(), 0)
	if err != nil || n != 7 {
		t.Fatalf("TriggerRotation = %d, %v; want 7", n, err)
	}
	pending := func() []int64 {
		ids, err := e.store.InFlight(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	if got := pending(); fmt.Sprint(got) != fmt.Sprint([]int64{devs[0].ID, devs[1].ID, devs[2].ID}) {
		t.Fatalf("PENDING after trigger = %v, want the 3 oldest secrets", got)
	}
	// A cycle does not exceed the bound.
	if rep := e.cycle(t); rep.Started != 0 {
		t.Fatalf("cycle started %d with every slot taken", rep.Started)
	}
	// The completing request starts the next device at once.
	if err := e.ack(t, devs[1], e.fetch(t, devs[1])); err != nil {
		t.Fatal(err)
	}
	if got := pending(); fmt.Sprint(got) != fmt.Sprint([]int64{devs[0].ID, devs[2].ID, devs[3].ID}) {
		t.Fatalf("PENDING after one completion = %v", got)
	}
	if e.nudges(devs[3].ClientID()) != 1 {
		t.Fatal("the device started by the completion was not nudged")
	}
}

func TestRotationSelectionQueuedBeforeRetries(t *testing.T) {
	e := newRotationEnv(t, model.RotationRestore, withConfig(func(c *mdm.Config) { c.RotationConcurrency = 1 }))
	m := e.model(t, "m1", "")
	a := e.device(t, m, `{}`)
	b := e.device(t, m, `{}`)
	e.rotate(t, a) // a starts, times out
	e.clock.Advance(6 * time.Minute)
	e.cycle(t)
	wantState(t, e, a, model.RotationTimeout)
	e.clock.Advance(2 * time.Hour) // a may be retried
	if _, err := e.svc.RotateDevice(t.Context(), b.ID); err != nil {
		t.Fatal(err)
	}
	// b (QUEUED) goes before a (TIMEOUT).
	wantState(t, e, b, model.RotationPending)
	wantState(t, e, a, model.RotationTimeout)
	if err := e.ack(t, b, e.fetch(t, b)); err != nil {
		t.Fatal(err)
	}
	wantState(t, e, a, model.RotationPending)
}

func TestRotateDevice(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	m := e.model(t, "m1", "")
	d := e.device(t, m, `{}`)
	e.rotate(t, d)
	if res, err := e.svc.RotateDevice(t.Context(), d.ID); err != nil || res != ports.RotateAlreadyPending {
		t.Fatalf("RotateDevice of a PENDING device = %q, %v", res, err)
	}
	off := e.device(t, m, `{}`)
	if _, err := e.svc.UpdateDevice(t.Context(), off.ID, ports.DeviceUpdate{Active: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.RotateDevice(t.Context(), off.ID); !errors.Is(err, model.ErrConflict) {
		t.Fatalf("RotateDevice of an inactive device = %v, want ErrConflict", err)
	}
	if _, err := e.svc.RotateDevice(t.Context(), 99999); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("RotateDevice of a missing device = %v, want ErrNotFound", err)
	}
	// Trigger queues active OK devices only.
	if n, err := e.svc.TriggerRotation(t.Context(), 0); err != nil || n != 0 {
		t.Fatalf("TriggerRotation = %d, %v; want 0 (one PENDING, one inactive)", n, err)
	}
}

func TestRotationDeactivationLeavesTheQueue(t *testing.T) {
	for _, mode := range []model.RotationMode{model.RotationGrace, model.RotationRestore} {
		t.Run(string(mode), func(t *testing.T) {
			e := newRotationEnv(t, mode, withConfig(func(c *mdm.Config) { c.RotationConcurrency = 1 }))
			m := e.model(t, "m1", "")
			p := e.device(t, m, `{}`)
			q := e.device(t, m, `{}`)
			old := e.secret(t, p)
			e.rotate(t, p)
			e.rotate(t, q)
			wantState(t, e, q, model.RotationQueued)
			fresh := e.fetch(t, p)

			if _, err := e.svc.UpdateDevice(t.Context(), q.ID, ports.DeviceUpdate{Active: ptr(false)}); err != nil {
				t.Fatal(err)
			}
			wantState(t, e, q, model.RotationOK)
			if _, err := e.svc.UpdateDevice(t.Context(), p.ID, ports.DeviceUpdate{Active: ptr(false)}); err != nil {
				t.Fatal(err)
			}
			wantState(t, e, p, model.RotationTimeout)
			wantAuth(t, e, p, old, true)
			wantAuth(t, e, p, fresh, mode == model.RotationGrace)
			if rep := e.cycle(t); rep.Started != 0 {
				t.Fatalf("inactive devices were started: %d", rep.Started)
			}
		})
	}
}

func TestRotationKeycloakDownDuringGenerationNeverGeneratesTwice(t *testing.T) {
	for _, mode := range []model.RotationMode{model.RotationGrace, model.RotationRestore} {
		t.Run(string(mode), func(t *testing.T) {
			e := newRotationEnv(t, mode)
			d := e.device(t, e.model(t, "m1", ""), `{}`)
			old := e.secret(t, d)
			e.rotate(t, d)
			down := &model.UnavailableError{Service: "keycloak", Err: errors.New("connection refused")}

			// The generation itself fails: nothing changes.
			e.idp.Hook = func(op, _ string) error {
				if op == "RegenerateSecret" {
					return down
				}
				return nil
			}
			if _, err := e.svc.FetchCredentials(t.Context(), e.get(t, d.ID)); !errors.Is(err, model.ErrUnavailable) {
				t.Fatalf("fetch while Keycloak fails = %v, want ErrUnavailable", err)
			}
			wantState(t, e, d, model.RotationPending)
			wantAuth(t, e, d, old, true)

			// The generation succeeds but its recording is lost (restore:
			// invalidating the rotated secret fails; grace: the commit
			// fails).
			generated := false
			e.idp.Hook = func(op, _ string) error {
				if op == "RegenerateSecret" {
					generated = true
				}
				if generated && op == "InvalidateRotatedSecret" && mode == model.RotationRestore {
					return down
				}
				return nil
			}
			e.store.Hook = func(op string) error {
				if generated && op == "UpdateDevice.commit" && mode == model.RotationGrace {
					return down
				}
				return nil
			}
			_, err := e.svc.FetchCredentials(t.Context(), e.get(t, d.ID))
			if !generated || err == nil {
				t.Fatalf("fetch after a generation whose recording failed = %v (generated %t), want an error", err, generated)
			}
			e.store.Hook = nil
			e.idp.Hook = nil
			fresh := e.fetch(t, d)
			if n := len(e.idpCalls("RegenerateSecret")); n != 2 { // one failed, one made the secret
				t.Fatalf("RegenerateSecret calls = %d, want 2 (the failed one and one generation)", n)
			}
			wantAuth(t, e, d, fresh, true)
			wantAuth(t, e, d, old, mode == model.RotationGrace)
			if err := e.ack(t, d, fresh); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// In grace mode a rotated secret while none is on record is a generation
// espmdm did not make (an administrator's "Regenerate" in Keycloak): the
// rotation hands out that secret instead of generating again, which would
// end the old secret the device still holds.
func TestRotationGraceTakesAGenerationMadeInKeycloak(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	old := e.secret(t, d)
	byAdmin, err := e.idp.RegenerateSecret(t.Context(), d.ClientID())
	if err != nil {
		t.Fatal(err)
	}
	// The reconciler notices the rotated secret of a generation that is
	// not espmdm's, and has the next generation read the client.
	rep, err := e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Regenerated, []string{d.ClientID()}) {
		t.Fatalf("reconcile: regenerated %v, want %s", rep.Regenerated, d.ClientID())
	}
	e.rotate(t, d)
	fresh := e.fetch(t, d)
	if fresh != byAdmin {
		t.Fatal("the fetch did not hand out the secret generated in Keycloak")
	}
	if n := len(e.idpCalls("RegenerateSecret")); n != 1 { // the administrator's
		t.Fatalf("RegenerateSecret calls = %d, want 1: the rotation must not generate again", n)
	}
	wantAuth(t, e, d, old, true)
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatal(err)
	}
	wantState(t, e, d, model.RotationOK)
	wantAuth(t, e, d, fresh, true)
	wantAuth(t, e, d, old, false)
}

// Restore mode against a realm whose policy keeps rotated secrets (the
// test stack's): when invalidating the rotated secret failed after a
// generation, the fetch that takes that generation invalidates it, or the
// old secret would keep working and the iat rule would prove nothing.
func TestRotationRestoreTakenGenerationStillEndsTheOldSecret(t *testing.T) {
	e := newRotationEnv(t, model.RotationRestore)
	e.idp.SetRotationPolicy(portstest.DefaultRotationPolicy())
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	if _, err := e.idp.CoverClient(t.Context(), d.ClientID()); err != nil {
		t.Fatal(err)
	}
	old := e.secret(t, d)
	e.rotate(t, d)
	failed := false
	e.idp.Hook = func(op, _ string) error {
		if op == "InvalidateRotatedSecret" && !failed {
			failed = true
			return &model.UnavailableError{Service: "keycloak", Err: errors.New("connection reset")}
		}
		return nil
	}
	if _, err := e.svc.FetchCredentials(t.Context(), e.get(t, d.ID)); !errors.Is(err, model.ErrUnavailable) {
		t.Fatalf("fetch with the invalidation failing = %v, want ErrUnavailable", err)
	}
	wantAuth(t, e, d, old, true) // kept as the rotated secret by the policy
	fresh := e.fetch(t, d)
	if n := len(e.idpCalls("RegenerateSecret")); n != 1 {
		t.Fatalf("RegenerateSecret calls = %d, want 1", n)
	}
	wantAuth(t, e, d, fresh, true)
	wantAuth(t, e, d, old, false)
}

func TestRotationKeycloakDownDuringAckAndRestore(t *testing.T) {
	down := &model.UnavailableError{Service: "keycloak", Err: errors.New("connection refused")}
	t.Run("grace ack", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationGrace)
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		e.rotate(t, d)
		fresh := e.fetch(t, d)
		e.idp.Hook = func(op, _ string) error {
			if op == "InvalidateRotatedSecret" {
				return down
			}
			return nil
		}
		if err := e.ack(t, d, fresh); !errors.Is(err, model.ErrUnavailable) {
			t.Fatalf("ack while Keycloak fails = %v", err)
		}
		wantState(t, e, d, model.RotationPending)
		e.idp.Hook = nil
		if err := e.ack(t, d, fresh); err != nil {
			t.Fatal(err)
		}
		wantState(t, e, d, model.RotationOK)
	})
	t.Run("restore timeout", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationRestore)
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		old := e.secret(t, d)
		e.rotate(t, d)
		e.fetch(t, d)
		e.clock.Advance(6 * time.Minute)
		e.idp.Hook = func(op, _ string) error {
			if op == "SetSecret" {
				return down
			}
			return nil
		}
		if _, err := e.svc.RunRotationCycle(t.Context()); !errors.Is(err, model.ErrUnavailable) {
			t.Fatalf("cycle while Keycloak fails = %v", err)
		}
		wantState(t, e, d, model.RotationPending)
		e.idp.Hook = nil
		if rep := e.cycle(t); rep.TimedOut != 1 {
			t.Fatalf("resumed cycle timed out %d", rep.TimedOut)
		}
		wantAuth(t, e, d, old, true)
	})
}

func TestRotationScheduleFiresOnceAndCollapsesMissedTicks(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace, withConfig(func(c *mdm.Config) { c.RotationConcurrency = 100 }))
	m := e.model(t, "m1", "")
	for range 3 {
		e.device(t, m, `{}`)
	}
	// The first cycle ever records now: nothing was missed.
	if rep := e.cycle(t); rep.Fired {
		t.Fatal("the first cycle fired")
	}
	e.clock.Advance(3*time.Hour + time.Minute) // three fire times missed
	rep := e.cycle(t)
	if !rep.Fired || rep.Queued != 3 || rep.Started != 3 {
		t.Fatalf("cycle after missed fires = %+v, want one fire queuing and starting 3", rep)
	}
	if rep := e.cycle(t); rep.Fired {
		t.Fatal("the missed fires fired twice")
	}
	next, err := e.svc.NextScheduledRotation(t.Context())
	if err != nil || next == nil || !next.After(e.clock.Now()) {
		t.Fatalf("NextScheduledRotation = %v, %v", next, err)
	}
}

// A fire whose queueing fails is not lost: the next cycle fires it again
// (review finding F4: the fire was recorded before the devices were
// queued, so a failure between the two skipped a whole period).
func TestRotationScheduleFireSurvivesAQueueingFailure(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace, withAudit(), withConfig(func(c *mdm.Config) { c.RotationConcurrency = 100 }))
	e.sched.Audit = e.store.Audit()
	m := e.model(t, "m1", "")
	for range 3 {
		e.device(t, m, `{}`)
	}
	e.cycle(t) // the first cycle ever records now
	e.clock.Advance(time.Hour + time.Minute)
	fail := errors.New("injected: the database went away between the fire and the queueing")
	e.store.Hook = func(op string) error {
		if op == "QueueRotations" {
			return fail
		}
		return nil
	}
	rep, err := e.svc.RunRotationCycle(t.Context())
	if !errors.Is(err, fail) {
		t.Fatalf("cycle with a failing queue = %+v, %v; want the failure", rep, err)
	}
	e.store.Hook = nil
	rep = e.cycle(t)
	if !rep.Fired || rep.Queued != 3 || rep.Started != 3 {
		t.Fatalf("cycle after the failure = %+v, want the fire repeated, queuing and starting 3", rep)
	}
	if rep := e.cycle(t); rep.Fired {
		t.Fatal("the fire fired a third time")
	}
	if got := entriesOf(e, model.AuditScheduleFired); len(got) != 1 {
		t.Errorf("%d rotation_schedule_fired audit entries, want 1", len(got))
	}
}

func TestInitRotationModes(t *testing.T) {
	covered := model.RotationPolicy{FeatureEnabled: true, Covered: true, Name: "p/p",
		Expiration: 5 * 365 * 24 * time.Hour, RotatedExpiration: mdm.DefaultRotationGrace}
	cases := []struct {
		name    string
		mode    model.RotationMode
		policy  model.RotationPolicy
		grace   time.Duration
		want    model.RotationMode
		wantErr []string
	}{
		{"auto with policy", model.RotationAuto, covered, 0, model.RotationGrace, nil},
		{"auto without policy", model.RotationAuto, model.RotationPolicy{Problems: []string{"feature off"}}, 0, model.RotationRestore, nil},
		{"restore with policy", model.RotationRestore, covered, 0, model.RotationRestore, nil},
		{"auto with a policy that rotates on updates", model.RotationAuto, model.RotationPolicy{FeatureEnabled: true, Covered: true, Name: "p/p",
			Expiration: 5 * 365 * 24 * time.Hour, RotatedExpiration: mdm.DefaultRotationGrace,
			Problems: []string{"remaining-rotation-period is 864000: client updates rotate the secret"}}, 0, model.RotationRestore, nil},
		{"auto with another grace period", model.RotationAuto, covered, 48 * time.Hour, model.RotationRestore, nil},
		{"grace without feature", model.RotationGrace, model.RotationPolicy{Problems: []string{"start Keycloak with --features=client-secret-rotation"}}, 0, "",
			[]string{"ROTATION_MODE=grace", "--features=client-secret-rotation"}},
		{"grace with another grace period", model.RotationGrace, covered, 48 * time.Hour, "",
			[]string{"ROTATION_GRACE is 48h0m0s", "rotated-expiration-period 604800"}},
		{"grace with a short expiration", model.RotationGrace, model.RotationPolicy{FeatureEnabled: true, Covered: true, Name: "p/p",
			Expiration: 5 * 24 * time.Hour, RotatedExpiration: mdm.DefaultRotationGrace}, 0, "", []string{"expiration-period"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(d *mdm.Deps, c *mdm.Config) {
				d.SecretBox = portstest.NewSecretBox()
				d.Schedule = hourly{}
				c.RotationMode = tc.mode
				c.RotationGrace = tc.grace
			})
			e.idp.SetRotationPolicy(tc.policy)
			got, _, err := e.svc.InitRotation(t.Context())
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("InitRotation = %s, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				if e.svc.RotationMode() != "" {
					t.Errorf("a refused mode is in force: %s", e.svc.RotationMode())
				}
				return
			}
			if err != nil || got != tc.want || e.svc.RotationMode() != tc.want {
				t.Fatalf("InitRotation = %s, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestRotationBeforeInitIsRefused(t *testing.T) {
	e := newEnv(t, func(d *mdm.Deps, _ *mdm.Config) { d.SecretBox = portstest.NewSecretBox() })
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	if _, err := e.svc.RotateDevice(t.Context(), d.ID); err == nil {
		t.Fatal("RotateDevice before InitRotation succeeded")
	}
	// The device API keeps working.
	if _, err := e.svc.DeviceConfig(t.Context(), d, model.DeviceClaims{}); err != nil {
		t.Fatalf("DeviceConfig before InitRotation: %v", err)
	}
}

func TestRotationStatusAndDashboard(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	m := e.model(t, "m1", "")
	a := e.device(t, m, `{}`)
	e.device(t, m, `{}`)
	e.rotate(t, a)
	e.fetch(t, a) // a generated secret awaits confirmation
	e.cycle(t)    // records the first fire
	st, err := e.svc.RotationStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != model.RotationGrace || st.Counts.ByState[model.RotationPending] != 1 || st.Counts.ByState[model.RotationOK] != 1 ||
		fmt.Sprint(st.InFlight) != fmt.Sprint([]int64{a.ID}) || st.NextScheduled == nil {
		t.Fatalf("RotationStatus = %+v", st)
	}
	e.clock.Advance(50 * 24 * time.Hour)
	db, err := e.svc.RotationDashboard(t.Context(), model.DashboardWarning, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if db.Counts[model.DashboardWarning] != 1 || db.Counts[model.DashboardCritical] != 1 || len(db.Page.Devices) != 1 {
		t.Fatalf("dashboard after 50 days = %+v (the unconfirmed rotation is critical, the other warning)", db.Counts)
	}
	if _, err := e.svc.RotationDashboard(t.Context(), "bogus", 0, 0); err == nil {
		t.Fatal("an unknown group was accepted")
	}
	if _, err := e.svc.RotationDashboard(t.Context(), model.DashboardHealthy, 1001, 0); err == nil {
		t.Fatal("limit 1001 was accepted")
	}
}

// TestRotationGraceNeverLocksOut walks a device that crashes at every step
// through a grace rotation and checks at each point that a secret it holds
// authenticates.
func TestRotationGraceNeverLocksOut(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	d := e.device(t, e.model(t, "m1", ""), `{}`)
	held := map[string]bool{e.secret(t, d): true} // what the device has persisted
	check := func(step string) {
		t.Helper()
		for s := range held {
			if e.idp.Authenticates(d.ClientID(), s) {
				return
			}
		}
		t.Fatalf("after %s no secret the device holds authenticates", step)
	}
	e.rotate(t, d)
	check("start")
	e.fetch(t, d) // crash after fetch, before persisting
	check("fetch, crash before persist")
	for attempt := range 3 {
		e.clock.Advance(6 * time.Minute)
		e.cycle(t)
		check(fmt.Sprintf("timeout %d", attempt))
		e.clock.Advance(time.Hour)
		e.cycle(t)
		check(fmt.Sprintf("retry %d", attempt))
	}
	fresh := e.fetch(t, d)
	held[fresh] = true // persisted as next, crash before ack
	check("persist, crash before ack")
	if err := e.ack(t, d, fresh); err != nil {
		t.Fatal(err)
	}
	delete(held, fresh)
	held = map[string]bool{fresh: true}
	check("ack")
}

// TestRotationUnansweredNudgeFreesTheSlotEarly: a device that does not
// fetch within RotationFetchTimeout of its nudge (offline) times out then,
// freeing its slot; one that fetched keeps the whole RotationTimeout, and
// so does a retry attempt only once it is answered again.
func TestRotationUnansweredNudgeFreesTheSlotEarly(t *testing.T) {
	for _, mode := range []model.RotationMode{model.RotationGrace, model.RotationRestore} {
		t.Run(string(mode), func(t *testing.T) {
			e := newRotationEnv(t, mode, withConfig(func(c *mdm.Config) {
				c.RotationFetchTimeout = time.Minute
				c.RotationRetry = 2 * time.Minute
			}))
			m := e.model(t, "m1", "")
			away, here := e.device(t, m, `{}`), e.device(t, m, `{}`)
			e.rotate(t, away)
			e.rotate(t, here)
			e.clock.Advance(30 * time.Second)
			e.fetch(t, here)

			e.clock.Advance(31 * time.Second) // 61 s after the nudges
			if rep := e.cycle(t); rep.TimedOut != 1 {
				t.Fatalf("cycle timed out %d, want the unanswered device only", rep.TimedOut)
			}
			wantState(t, e, away, model.RotationTimeout)
			wantState(t, e, here, model.RotationPending)

			// The retry is a new attempt: unanswered again, it times out
			// at the fetch deadline; the earlier fetch does not count.
			e.clock.Advance(2 * time.Minute)
			e.cycle(t)
			wantState(t, e, away, model.RotationPending)
			e.clock.Advance(61 * time.Second)
			e.cycle(t)
			wantState(t, e, away, model.RotationTimeout)
			// The answered device times out only after RotationTimeout.
			wantState(t, e, here, model.RotationPending)
			e.clock.Advance(2 * time.Minute) // 362 s after its nudge
			if rep := e.cycle(t); rep.TimedOut != 1 {
				t.Fatalf("cycle timed out %d, want the answered device once its RotationTimeout passed", rep.TimedOut)
			}
			// Timed out, and retried at once (its retry delay has passed).
			if got := e.get(t, here.ID); got.LastRotationAttemptAt == nil || !got.LastRotationAttemptAt.Equal(e.clock.Now()) {
				t.Errorf("answered device after its timeout: attempt %v, want a new attempt now", got.LastRotationAttemptAt)
			}
		})
	}
}

// Grace-mode generation applies the rotation policy to a client made
// before it, before generating (in Keycloak the old secret would die at
// once): in one call where the provider offers ports.CoveredSecretsReader,
// else by CoverClient and Secrets.
func TestRotationGraceCoversAClientMadeBeforeThePolicy(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []option
		want []string // the provider's calls, in order, among watched
	}{
		{"with CoveredSecrets", nil, []string{"CoveredSecrets", "RegenerateSecret"}},
		{"without it", []option{func(d *mdm.Deps, _ *mdm.Config) {
			d.Rotator = struct{ ports.SecretRotator }{d.Rotator} // hides CoveredSecrets
		}}, []string{"CoverClient", "Secrets", "RegenerateSecret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRotationEnv(t, model.RotationGrace, tc.opts...)
			m := e.model(t, "m1", "")
			e.idp.SetGrace(false)
			d := e.device(t, m, `{}`) // made while no policy covered it
			e.idp.SetGrace(true)
			e.uncovered(t, d) // as a device made in restore mode, or before the policy, is
			if e.idp.Covered(d.ClientID()) {
				t.Fatal("the client is covered before the rotation")
			}
			old := e.secret(t, d)
			e.rotate(t, d)
			fresh := e.fetch(t, d)
			watched := []string{"CoveredSecrets", "CoverClient", "Secrets", "RegenerateSecret"}
			var got []string
			for _, c := range e.idp.Calls() {
				if slices.Contains(watched, c.Op) {
					got = append(got, c.Op)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("calls = %v, want %v", got, tc.want)
			}
			wantAuth(t, e, d, old, true)
			wantAuth(t, e, d, fresh, true)
			if err := e.ack(t, d, fresh); err != nil {
				t.Fatal(err)
			}
			wantState(t, e, d, model.RotationOK)
			wantAuth(t, e, d, old, false)
		})
	}
}

// uncovered records d's client as not known to be covered by the rotation
// policy (a device made in restore mode, or before the policy existed).
func (e *renv) uncovered(t *testing.T, d model.Device) {
	t.Helper()
	if _, err := e.store.UpdateDevice(t.Context(), d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
		row.ClientCovered = false
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A grace-mode generation reads the client only when it is unsure: an
// intent not its own (a generation whose recording was lost may have
// happened), or a client not known to be covered by the policy. Its own
// intent on a covered client costs the identity provider the generation
// alone.
func TestRotationGraceGenerationReadsOnlyWhenUnsure(t *testing.T) {
	watched := []string{"CoveredSecrets", "CoverClient", "Secrets", "RegenerateSecret"} // grace reads no ClientSecret
	calls := func(e *renv) []string {
		var got []string
		for _, c := range e.idp.Calls() {
			if slices.Contains(watched, c.Op) {
				got = append(got, c.Op)
			}
		}
		return got
	}
	t.Run("own intent, covered", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationGrace)
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		e.rotate(t, d)
		e.fetch(t, d)
		if got, want := calls(e), []string{"RegenerateSecret"}; !slices.Equal(got, want) {
			t.Errorf("calls = %v, want %v", got, want)
		}
	})
	t.Run("an intent left behind", func(t *testing.T) {
		e := newRotationEnv(t, model.RotationGrace)
		d := e.device(t, e.model(t, "m1", ""), `{}`)
		old := e.secret(t, d)
		e.rotate(t, d)
		// A step that recorded its intent and went away before (or
		// after) asking Keycloak.
		if _, err := e.store.UpdateDevice(t.Context(), d.ID, func(row *model.Device) ([]model.AuditEntry, error) {
			_, _, _, err := row.IntendGeneration(e.clock.Now())
			return nil, err
		}); err != nil {
			t.Fatal(err)
		}
		fresh := e.fetch(t, d)
		if got, want := calls(e), []string{"CoveredSecrets", "RegenerateSecret"}; !slices.Equal(got, want) {
			t.Errorf("calls = %v, want %v", got, want)
		}
		wantAuth(t, e, d, old, true)
		if err := e.ack(t, d, fresh); err != nil {
			t.Fatal(err)
		}
	})
}

// The reconciler records the clients the policy covers (applying it where
// it was not), so that their generations need no read.
func TestReconcileCoversClientsInGraceMode(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace)
	m := e.model(t, "m1", "")
	e.idp.SetGrace(false)
	before := e.device(t, m, `{}`) // its client is not covered
	e.idp.SetGrace(true)
	e.uncovered(t, before)
	covered := e.device(t, m, `{}`)
	e.uncovered(t, covered) // covered in Keycloak, not known to be

	rep, err := e.svc.Reconcile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{before.ClientID(), covered.ClientID()}; !slices.Equal(rep.Covered, want) {
		t.Fatalf("covered %v, want %v", rep.Covered, want)
	}
	if n := len(e.idpCalls("CoverClient")); n != 1 {
		t.Fatalf("CoverClient calls = %d, want 1 (the other client is covered already)", n)
	}
	if !e.idp.Covered(before.ClientID()) || !e.get(t, before.ID).ClientCovered || !e.get(t, covered.ID).ClientCovered {
		t.Fatal("the clients are not covered and recorded so")
	}
	old := e.secret(t, before)
	e.rotate(t, before)
	fresh := e.fetch(t, before)
	wantAuth(t, e, before, old, true)
	wantAuth(t, e, before, fresh, true)
}

// Completions at once coalesce their slot fills (one start at a time in a
// process, repeated while more are due): when the last of them returns,
// every freed slot is filled, and no device is started twice.
func TestRotationConcurrentCompletionsFillEverySlot(t *testing.T) {
	e := newRotationEnv(t, model.RotationGrace, withConfig(func(c *mdm.Config) { c.RotationConcurrency = 8 }))
	m := e.model(t, "m1", "")
	var devs []model.Device
	for range 16 {
		devs = append(devs, e.device(t, m, `{}`))
		e.clock.Advance(time.Second) // the first eight start first
	}
	if n, err := e.svc.TriggerRotation(t.Context(), 0); err != nil || n != 16 {
		t.Fatalf("TriggerRotation = %d, %v; want 16", n, err)
	}
	secrets := map[int64]string{}
	for _, d := range devs[:8] {
		wantState(t, e, d, model.RotationPending)
		secrets[d.ID] = e.fetch(t, d)
	}
	var wg sync.WaitGroup
	for _, d := range devs[:8] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.svc.AckCredentials(t.Context(), e.get(t, d.ID), digest(secrets[d.ID])); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, d := range devs[:8] {
		wantState(t, e, d, model.RotationOK)
	}
	for _, d := range devs[8:] {
		wantState(t, e, d, model.RotationPending)
		if n := e.nudges(d.ClientID()); n != 1 {
			t.Errorf("device %d nudged %d times, want once", d.ID, n)
		}
	}
}
