package model_test

import (
	"errors"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

var t0 = time.Date(2026, 3, 7, 8, 0, 0, 0, time.UTC)

func at(d time.Duration) *time.Time { t := t0.Add(d); return &t }

// refused checks that err is a *RotationError of step that matches
// ErrConflict and reads as a *ConflictError with the same reason.
func refused(t *testing.T, what string, err error, step model.RotationStep) {
	t.Helper()
	var re *model.RotationError
	var ce *model.ConflictError
	switch {
	case !errors.As(err, &re):
		t.Errorf("%s: error %v, want a *RotationError", what, err)
	case re.Step != step:
		t.Errorf("%s: refused step %q, want %q", what, re.Step, step)
	case !errors.Is(err, model.ErrConflict) || !errors.As(err, &ce) || ce.Reason != re.Reason:
		t.Errorf("%s: %v does not read as a conflict with its reason", what, err)
	}
}

func TestQueueRotation(t *testing.T) {
	for _, c := range []struct {
		state      model.RotationState
		active     bool
		wantQueued bool
		want       model.RotationState
		refused    bool
	}{
		{model.RotationOK, true, true, model.RotationQueued, false},
		{model.RotationQueued, true, true, model.RotationQueued, false},
		{model.RotationTimeout, true, true, model.RotationQueued, false},
		{model.RotationPending, true, false, model.RotationPending, false},
		{model.RotationOK, false, false, model.RotationOK, true},
	} {
		d := model.Device{ID: 1, Active: c.active, RotationState: c.state}
		queued, err := d.QueueRotation()
		if c.refused {
			refused(t, "queue an inactive device", err, model.StepQueue)
		} else if err != nil {
			t.Errorf("queue from %s: %v", c.state, err)
		}
		if queued != c.wantQueued || d.RotationState != c.want {
			t.Errorf("queue from %s (active %t): queued %t, state %s; want %t, %s", c.state, c.active, queued, d.RotationState, c.wantQueued, c.want)
		}
	}
}

func TestStartAttempt(t *testing.T) {
	for _, s := range []model.RotationState{model.RotationQueued, model.RotationTimeout} {
		d := model.Device{ID: 1, Active: true, RotationState: s}
		if err := d.StartAttempt(t0); err != nil || d.RotationState != model.RotationPending || !d.LastRotationAttemptAt.Equal(t0) {
			t.Errorf("start from %s: %v, state %s, attempt %v", s, err, d.RotationState, d.LastRotationAttemptAt)
		}
	}
	for _, s := range []model.RotationState{model.RotationOK, model.RotationPending} {
		d := model.Device{ID: 1, Active: true, RotationState: s}
		refused(t, "start from "+string(s), d.StartAttempt(t0), model.StepStart)
		if d.RotationState != s {
			t.Errorf("a refused start changed the state to %s", d.RotationState)
		}
	}
}

func TestRecordGeneration(t *testing.T) {
	d := model.Device{ID: 1, Active: true, RotationState: model.RotationPending, LastRotationAttemptAt: at(0)}
	if generated, err := d.CanGenerate(); err != nil || generated {
		t.Fatalf("CanGenerate on a fresh attempt = %t, %v", generated, err)
	}
	if err := d.RecordGeneration(t0.Add(time.Second), "abc", at(time.Second)); err != nil {
		t.Fatal(err)
	}
	if !d.GeneratedInRestoreMode() || d.SecretSHA256 != "abc" {
		t.Errorf("after a restore-mode generation: %+v", d)
	}
	if generated, err := d.CanGenerate(); err != nil || !generated {
		t.Errorf("CanGenerate after a generation = %t, %v; want true (a concurrent fetch does nothing)", generated, err)
	}
	refused(t, "generate twice", d.RecordGeneration(t0.Add(2*time.Second), "def", nil), model.StepGenerate)
	if d.SecretSHA256 != "abc" {
		t.Errorf("a refused generation changed the digest to %s", d.SecretSHA256)
	}
	q := model.Device{ID: 2, RotationState: model.RotationQueued}
	refused(t, "generate while QUEUED", q.RecordGeneration(t0, "abc", nil), model.StepGenerate)
}

func TestIntendGeneration(t *testing.T) {
	d := model.Device{ID: 1, Active: true, RotationState: model.RotationPending, LastRotationAttemptAt: at(0)}
	mark, outstanding, generated, err := d.IntendGeneration(t0.Add(time.Nanosecond))
	if err != nil || outstanding || generated || !mark.Equal(t0) {
		t.Fatalf("first intent = %v, %t, %t, %v; want %v (whole microseconds), none outstanding", mark, outstanding, generated, err, t0)
	}
	if d.GenerationUnsure(mark, outstanding) {
		t.Error("unsure with its own intent in place")
	}
	// A second step on the same row (a concurrent fetch, or one after a
	// crash): its mark is later even in the same microsecond, and the
	// first step is no longer sure.
	mark2, outstanding2, _, err := d.IntendGeneration(t0)
	if err != nil || !outstanding2 || !mark2.After(mark) {
		t.Fatalf("second intent = %v, %t, %v; want later than %v, outstanding", mark2, outstanding2, err, mark)
	}
	if !d.GenerationUnsure(mark, outstanding) || !d.GenerationUnsure(mark2, outstanding2) {
		t.Error("sure although another step's intent was outstanding")
	}
	if !d.GenerationUnsure(time.Time{}, false) {
		t.Error("sure without an intent of its own")
	}
	if err := d.RecordGeneration(t0.Add(time.Second), "abc", nil); err != nil || d.GenerationIntentAt != nil {
		t.Fatalf("RecordGeneration = %v, intent %v; want it cleared", err, d.GenerationIntentAt)
	}
	if _, _, generated, err := d.IntendGeneration(t0.Add(2 * time.Second)); err != nil || !generated || d.GenerationIntentAt != nil {
		t.Errorf("intent after the generation: generated %t, %v, intent %v; want nothing recorded", generated, err, d.GenerationIntentAt)
	}
	q := model.Device{ID: 2, RotationState: model.RotationQueued}
	_, _, _, err = q.IntendGeneration(t0)
	refused(t, "intend while QUEUED", err, model.StepGenerate)
	// A restore forgets the intent and what is known of the client.
	r := model.Device{ID: 3, RotationState: model.RotationPending, ClientCovered: true, PreviousSecret: []byte("x")}
	if _, _, _, err := r.IntendGeneration(t0); err != nil {
		t.Fatal(err)
	}
	if err := r.TimeOutAttempt(true); err != nil || r.GenerationIntentAt != nil || r.ClientCovered {
		t.Errorf("after a restoring timeout: %v, intent %v, covered %t", err, r.GenerationIntentAt, r.ClientCovered)
	}
}

func TestCheckAck(t *testing.T) {
	pending := model.Device{ID: 1, RotationState: model.RotationPending, NewSecretAt: at(0), SecretSHA256: "new"}
	if ok, err := pending.CheckAck("new"); !ok || err != nil {
		t.Errorf("ack of the generated secret = %t, %v", ok, err)
	}
	_, err := pending.CheckAck("other")
	refused(t, "ack of another secret", err, model.StepComplete)

	// A grace timeout keeps the generation: its ack still completes.
	timedOut := pending
	timedOut.RotationState = model.RotationTimeout
	if ok, err := timedOut.CheckAck("new"); !ok || err != nil {
		t.Errorf("ack after a grace timeout = %t, %v", ok, err)
	}

	// The last completed rotation's secret: 204 again, completing nothing.
	done := model.Device{ID: 1, RotationState: model.RotationQueued, SecretSHA256: "last"}
	if ok, err := done.CheckAck("last"); ok || err != nil {
		t.Errorf("repeated ack of the completed secret = %t, %v; want false, nil", ok, err)
	}
	_, err = done.CheckAck("other")
	refused(t, "ack without a generation", err, model.StepComplete)
}

func TestConfirmedByToken(t *testing.T) {
	restore := model.Device{RotationState: model.RotationPending, NewSecretAt: at(0), IATAfter: at(500 * time.Millisecond)}
	for _, c := range []struct {
		iat  time.Duration
		want bool
	}{
		{0, false},                      // the same second: a token of the old secret
		{900 * time.Millisecond, false}, // still that second
		{time.Second, true},             // a later second
	} {
		if got := restore.ConfirmedByToken(t0.Add(c.iat)); got != c.want {
			t.Errorf("iat %s: %t, want %t", c.iat, got, c.want)
		}
	}
	grace := restore
	grace.IATAfter = nil
	if grace.ConfirmedByToken(t0.Add(time.Hour)) {
		t.Error("a grace-mode generation completed by a token")
	}
}

func TestCompleteRotation(t *testing.T) {
	d := model.Device{ID: 1, RotationState: model.RotationPending, LastRotationAttemptAt: at(0), SecretCreatedAt: at(-time.Hour),
		NewSecretAt: at(time.Second), IATAfter: at(time.Second), PreviousSecret: []byte("sealed"), SecretSHA256: "new"}
	c, err := d.CompleteRotation(t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Attempt.Equal(t0) || !c.Generated.Equal(t0.Add(time.Second)) || !c.Replaced.Equal(t0.Add(-time.Hour)) {
		t.Errorf("completion %+v", c)
	}
	if d.RotationState != model.RotationOK || d.Generated() || d.IATAfter != nil || d.PreviousSecret != nil ||
		d.SecretSHA256 != "new" || !d.SecretCreatedAt.Equal(t0.Add(time.Second)) || !d.LastRotationCompletedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("after completion: %+v", d)
	}
	_, err = d.CompleteRotation(t0)
	refused(t, "complete twice", err, model.StepComplete)
}

// The two rules that depend on the mode that generated a secret.
func TestModeRules(t *testing.T) {
	grace := model.Device{NewSecretAt: at(0)}
	restore := model.Device{NewSecretAt: at(0), IATAfter: at(0)}
	for _, c := range []struct {
		name           string
		d              model.Device
		mode           model.RotationMode
		restores, ends bool
	}{
		{"grace generation, grace mode", grace, model.RotationGrace, false, true},
		{"grace generation, restore mode", grace, model.RotationRestore, true, true},
		{"restore generation, restore mode", restore, model.RotationRestore, true, false},
		{"restore generation, grace mode", restore, model.RotationGrace, true, true},
	} {
		if got := c.d.TimeoutRestores(c.mode); got != c.restores {
			t.Errorf("%s: TimeoutRestores %t, want %t", c.name, got, c.restores)
		}
		if got := c.d.RotatedSecretMayLinger(c.mode); got != c.ends {
			t.Errorf("%s: RotatedSecretMayLinger %t, want %t", c.name, got, c.ends)
		}
	}
}

func TestTimeOutAttempt(t *testing.T) {
	gen := func() model.Device {
		return model.Device{ID: 1, Active: true, RotationState: model.RotationPending, LastRotationAttemptAt: at(0),
			NewSecretAt: at(time.Second), IATAfter: at(time.Second), PreviousSecret: []byte("sealed"), SecretSHA256: "new"}
	}
	d := gen()
	if err := d.TimeOutAttempt(false); err != nil || d.RotationState != model.RotationTimeout || !d.Generated() || d.SecretSHA256 != "new" {
		t.Errorf("grace timeout: %v, %+v; want TIMEOUT with the generation kept", err, d)
	}
	d = gen()
	if err := d.TimeOutAttempt(true); err != nil || d.Generated() || d.IATAfter != nil || d.PreviousSecret != nil || d.SecretSHA256 != "" {
		t.Errorf("restoring timeout: %v, %+v; want the generation forgotten", err, d)
	}
	refused(t, "time out twice", d.TimeOutAttempt(true), model.StepTimeOut)
}

func TestAttemptExpired(t *testing.T) {
	before, unfetched := t0.Add(-5*time.Minute), t0.Add(-time.Minute)
	for _, c := range []struct {
		name string
		d    model.Device
		want bool
	}{
		{"older than the timeout", model.Device{Active: true, RotationState: model.RotationPending, LastRotationAttemptAt: at(-6 * time.Minute), LastRotationFetchAt: at(-6 * time.Minute)}, true},
		{"unfetched past the fetch timeout", model.Device{Active: true, RotationState: model.RotationPending, LastRotationAttemptAt: at(-2 * time.Minute)}, true},
		{"fetched, within the timeout", model.Device{Active: true, RotationState: model.RotationPending, LastRotationAttemptAt: at(-2 * time.Minute), LastRotationFetchAt: at(-90 * time.Second)}, false},
		{"recent", model.Device{Active: true, RotationState: model.RotationPending, LastRotationAttemptAt: at(-10 * time.Second)}, false},
		{"inactive", model.Device{Active: false, RotationState: model.RotationPending, LastRotationAttemptAt: at(0)}, true},
		{"not pending", model.Device{Active: true, RotationState: model.RotationTimeout, LastRotationAttemptAt: at(-time.Hour)}, false},
	} {
		if got := c.d.AttemptExpired(before, unfetched); got != c.want {
			t.Errorf("%s: %t, want %t", c.name, got, c.want)
		}
	}
}
