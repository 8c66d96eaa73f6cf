package portstest_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports/portstest"
)

func TestCoredumpAnalyzerFake(t *testing.T) {
	ctx := context.Background()
	a := &portstest.CoredumpAnalyzer{}
	_, err := a.Analyze(ctx, []byte("garbage!"), strings.NewReader("elf"))
	if !errors.Is(err, model.ErrCoredumpFailed) || !errors.Is(err, model.ErrCoredumpFormat) {
		t.Errorf("garbage: got %v, want a failure matching ErrCoredumpFormat", err)
	}
	a.Script = func(dump, elf []byte) (model.CoredumpAnalysis, error) {
		return model.CoredumpAnalysis{Text: string(dump) + "+" + string(elf)}, nil
	}
	got, err := a.Analyze(ctx, []byte("d"), strings.NewReader("e"))
	if err != nil || got.Text != "d+e" {
		t.Errorf("scripted: got %+v, %v", got, err)
	}
	if calls := a.Calls(); len(calls) != 2 || string(calls[1].ELF) != "e" {
		t.Errorf("calls %+v", calls)
	}
	a.CheckErr = &model.CoredumpToolError{Tool: "esp-coredump", Path: "x", Err: errors.New("not found")}
	if _, err := a.Analyze(ctx, nil, strings.NewReader("")); !errors.Is(err, model.ErrCoredumpToolMissing) || !errors.Is(a.Check(ctx), model.ErrCoredumpToolMissing) {
		t.Errorf("tools missing: got %v", err)
	}
}
