package main

import (
	"strings"
	"testing"
	"time"
)

func TestScheduleNext(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"first Saturday", []string{"--cron", "0 8 * * 6#1", "--from", "2026-12-01T00:00:00Z", "--count", "3"},
			[]string{"2026-12-05T08:00:00Z", "2027-01-02T08:00:00Z", "2027-02-06T08:00:00Z"}},
		{"five by default", []string{"--cron", "0 8 * * 6#1", "--from", "2026-12-01T00:00:00Z"},
			[]string{"2026-12-05T08:00:00Z", "2027-01-02T08:00:00Z", "2027-02-06T08:00:00Z", "2027-03-06T08:00:00Z", "2027-04-03T08:00:00Z"}},
		{"strictly after --from", []string{"--cron", "0 8 * * 6#1", "--from", "2026-12-05T08:00:00Z", "--count", "1"},
			[]string{"2027-01-02T08:00:00Z"}},
		{"in a zone, across DST", []string{"--cron", "0 8 * * 6#1", "--tz", "Europe/Berlin", "--from", "2026-03-01T00:00:00+01:00", "--count", "2"},
			[]string{"2026-03-07T07:00:00Z", "2026-04-04T06:00:00Z"}},
		{"either day", []string{"--cron", "0 0 13 * FRI", "--from", "2026-03-28T00:00:00Z", "--count", "4"},
			[]string{"2026-04-03T00:00:00Z", "2026-04-10T00:00:00Z", "2026-04-13T00:00:00Z", "2026-04-17T00:00:00Z"}},
		{"--from with fractions and an offset", []string{"--cron", "*/15 * * * *", "--from", "2026-04-15T10:14:59.9-02:00", "--count", "2"},
			[]string{"2026-04-15T12:15:00Z", "2026-04-15T12:30:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"schedule", "next"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			if want := strings.Join(tt.want, "\n") + "\n"; stdout != want {
				t.Errorf("stdout = %q, want %q", stdout, want)
			}
			if stderr != "" {
				t.Errorf("stderr = %q, want nothing", stderr)
			}
		})
	}
}

func TestScheduleNextFromNow(t *testing.T) {
	before := time.Now()
	code, stdout, stderr := runCLI(t, "schedule", "next", "--cron", "* * * * *", "--tz", "Asia/Kolkata")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want 5: %q", len(lines), stdout)
	}
	prev := before
	for i, line := range lines {
		got, err := time.Parse(time.RFC3339, line)
		if err != nil || !strings.HasSuffix(line, "Z") {
			t.Fatalf("line %d %q is not RFC 3339 UTC", i, line)
		}
		if !got.After(prev) || got.Second() != 0 || got.Sub(prev) > time.Minute {
			t.Errorf("line %d = %s, want the minute after %s", i, line, prev.Format(time.RFC3339Nano))
		}
		prev = got
	}
}

func TestScheduleNextErrors(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"no --cron", nil, 2, "--cron is required"},
		{"too few fields", []string{"--cron", "0 8 * *"}, 2, `invalid --cron: expression: "0 8 * *" has 4 fields, want 5`},
		{"out of range", []string{"--cron", "0 25 * * *"}, 2, `invalid --cron: hour: "25" is outside 0-23`},
		{"bad name", []string{"--cron", "0 8 * * FRY"}, 2, `day-of-week: "FRY" is not a number or a name`},
		{"step 0", []string{"--cron", "*/0 8 * * *"}, 2, "minute"},
		{"not expressible", []string{"--cron", "0 8 * * FRI-MON"}, 2, "runs backwards"},
		{"both day fields, one with *", []string{"--cron", "0 8 */2 * 1"}, 2, "day-of-month/day-of-week"},
		{"bad zone", []string{"--cron", "0 8 * * *", "--tz", "Europe/Berln"}, 2, `invalid --tz: time zone: "Europe/Berln"`},
		{"bad --from", []string{"--cron", "0 8 * * *", "--from", "2026-12-01"}, 2, `--from "2026-12-01" is not an RFC 3339 time`},
		{"--from out of range", []string{"--cron", "0 8 * * *", "--from", "1960-01-01T00:00:00Z"}, 1, "outside the supported years"},
		{"--count 0", []string{"--cron", "0 8 * * *", "--count", "0"}, 2, "--count must be 1 to 10000, not 0"},
		{"--count negative", []string{"--cron", "0 8 * * *", "--count", "-3"}, 2, "--count must be 1 to 10000"},
		{"--count not a number", []string{"--cron", "0 8 * * *", "--count", "many"}, 1, `invalid argument "many"`},
		{"an argument", []string{"--cron", "0 8 * * *", "extra"}, 1, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, append([]string{"schedule", "next"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr, tt.wantCode, tt.wantErr)
			}
			if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1: %q", len(lines), stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
}

func TestScheduleHelp(t *testing.T) {
	code, stdout, stderr := runCLI(t, "schedule", "--help")
	if code != 0 || !strings.Contains(stdout, "next") {
		t.Errorf("schedule --help: exit %d, stdout %q, stderr %q; want it to list next", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "schedule", "next", "--help")
	if code != 0 {
		t.Fatalf("schedule next --help: exit %d, stderr %q", code, stderr)
	}
	for _, flag := range []string{"--cron", "--tz", "--from", "--count", "RFC 3339"} {
		if !strings.Contains(stdout, flag) {
			t.Errorf("schedule next --help does not mention %s: %q", flag, stdout)
		}
	}
	code, stdout, _ = runCLI(t, "--help")
	if code != 0 || !strings.Contains(stdout, "schedule") {
		t.Errorf("--help: exit %d, want it to list schedule: %q", code, stdout)
	}
}
