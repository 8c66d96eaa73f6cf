package model_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/core/model"
)

func TestCheckTags(t *testing.T) {
	many := make([]string, model.MaxTags+1)
	for i := range many {
		many[i] = "a"
	}
	for _, c := range []struct {
		name string
		in   []string
		want []string
		bad  string
	}{
		{"nil is none", nil, []string{}, ""},
		{"sorted, duplicates once", []string{"b", "a:1", "b"}, []string{"a:1", "b"}, ""},
		{"every allowed character", []string{"az09_.:-", strings.Repeat("x", 64)}, []string{"az09_.:-", strings.Repeat("x", 64)}, ""},
		{"32 given", many[:32], []string{"a"}, ""},
		{"33 given", many, nil, "at most 32"},
		{"upper case", []string{"A"}, nil, "must match"},
		{"empty", []string{""}, nil, "must match"},
		{"65 characters", []string{strings.Repeat("x", 65)}, nil, "must match"},
		{"a slash", []string{"a/b"}, nil, "must match"},
		{"a trailing newline", []string{"a\n"}, nil, "must match"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := model.CheckTags("tags", c.in)
			if c.bad == "" {
				if err != nil || !slices.Equal(got, c.want) || got == nil {
					t.Errorf("got %#v, %v; want %v", got, err, c.want)
				}
				return
			}
			var ve *model.ValidationError
			if !errors.As(err, &ve) || ve.Field != "tags" || !strings.Contains(ve.Reason, c.bad) {
				t.Errorf("got %v; want a validation error on tags saying %q", err, c.bad)
			}
		})
	}
}

func TestReleasedIn(t *testing.T) {
	at := func(min int) *time.Time { v := time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC); return &v }
	hist := []model.Firmware{
		{ID: 4, ReleasedAt: nil},   // stored, newest
		{ID: 3, ReleasedAt: at(5)}, // released last (ties with 2, larger id)
		{ID: 2, ReleasedAt: at(5)},
		{ID: 1, ReleasedAt: at(9)},
	}
	if got, ok := model.ReleasedIn(hist); !ok || got.ID != 1 {
		t.Errorf("ReleasedIn = %d, %v; want 1 (the latest released_at)", got.ID, ok)
	}
	if got, ok := model.ReleasedIn(hist[:3]); !ok || got.ID != 3 {
		t.Errorf("ReleasedIn of a tie = %d, %v; want 3 (the larger id)", got.ID, ok)
	}
	if _, ok := model.ReleasedIn(hist[:1]); ok {
		t.Errorf("ReleasedIn of stored uploads only found one")
	}
}
