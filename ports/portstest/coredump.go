package portstest

import (
	"context"
	"io"
	"sync"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// CoredumpAnalyzer is a scripted ports.CoredumpAnalyzer for core tests (the
// real one, adapters/coredump, is tested against the real tools). It reads
// the ELF whole, records the call, and answers with Script; without one,
// with an analysis holding the dump's chip and panic reason from
// model.ReadCoredumpInfo, or that function's error as a failure.
type CoredumpAnalyzer struct {
	// Script, when set, answers every Analyze call. Set it before use.
	Script func(dump, elf []byte) (model.CoredumpAnalysis, error)
	// CheckErr is what Check returns, and what Analyze returns before
	// anything else when set (tools missing). Set it before use.
	CheckErr error

	mu    sync.Mutex
	calls []CoredumpCall
}

// CoredumpCall is one recorded Analyze call (copies of its inputs).
type CoredumpCall struct {
	Dump, ELF []byte
}

var _ ports.CoredumpAnalyzer = (*CoredumpAnalyzer)(nil)

// Calls returns the Analyze calls so far, in order.
func (a *CoredumpAnalyzer) Calls() []CoredumpCall {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]CoredumpCall(nil), a.calls...)
}

// Analyze implements ports.CoredumpAnalyzer.
func (a *CoredumpAnalyzer) Analyze(ctx context.Context, dump []byte, elf io.Reader) (model.CoredumpAnalysis, error) {
	if err := ctx.Err(); err != nil {
		return model.CoredumpAnalysis{}, err
	}
	if a.CheckErr != nil {
		return model.CoredumpAnalysis{}, a.CheckErr
	}
	e, err := io.ReadAll(elf)
	if err != nil {
		return model.CoredumpAnalysis{}, err
	}
	d := append([]byte(nil), dump...)
	a.mu.Lock()
	a.calls = append(a.calls, CoredumpCall{Dump: d, ELF: e})
	a.mu.Unlock()
	if a.Script != nil {
		return a.Script(d, e)
	}
	info, err := model.ReadCoredumpInfo(d)
	if err != nil {
		return model.CoredumpAnalysis{}, &model.CoredumpFailedError{Reason: err.Error(), Err: err}
	}
	return model.CoredumpAnalysis{Chip: info.Chip, PanicReason: info.PanicReason}, nil
}

// Check implements ports.CoredumpAnalyzer.
func (a *CoredumpAnalyzer) Check(context.Context) error { return a.CheckErr }
