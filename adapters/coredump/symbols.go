package coredump

import (
	"debug/dwarf"
	"debug/elf"
	"errors"
	"fmt"
	"sort"
)

// symbolizer names code addresses from an application ELF: the function
// from the symbol table, the file and line from the DWARF line table.
type symbolizer struct {
	funcs []elfFunc // STT_FUNC symbols by address
	dw    *dwarf.Data
}

type elfFunc struct {
	addr, size uint32
	name       string
}

// openSymbolizer reads the symbol table and the DWARF data of a 32-bit
// ELF. An ELF without DWARF still names functions; one without symbols
// still gives lines.
func openSymbolizer(path string) (*symbolizer, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("the application ELF: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS32 {
		return nil, fmt.Errorf("the application ELF is not a 32-bit ELF")
	}
	s := &symbolizer{}
	syms, err := f.Symbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, fmt.Errorf("the application ELF's symbols: %w", err)
	}
	for _, sym := range syms {
		if elf.ST_TYPE(sym.Info) == elf.STT_FUNC && sym.Value != 0 && sym.Value <= 0xFFFFFFFF {
			s.funcs = append(s.funcs, elfFunc{addr: uint32(sym.Value), size: uint32(sym.Size), name: sym.Name})
		}
	}
	sort.SliceStable(s.funcs, func(i, j int) bool { return s.funcs[i].addr < s.funcs[j].addr })
	if dw, err := f.DWARF(); err == nil {
		s.dw = dw
	}
	return s, nil
}

// function is the function whose code holds pc, or "".
func (s *symbolizer) function(pc uint32) string {
	i := sort.Search(len(s.funcs), func(i int) bool { return s.funcs[i].addr > pc }) - 1
	// Aliases and zero-size labels may share or precede the address: look
	// at a few candidates below pc.
	for j := i; j >= 0 && j > i-8; j-- {
		if f := s.funcs[j]; pc-f.addr < f.size {
			return f.name
		}
	}
	return ""
}

// line is the source file and line of pc from the DWARF line table, or
// "", 0.
func (s *symbolizer) line(pc uint32) (string, int) {
	if s.dw == nil {
		return "", 0
	}
	cu, err := s.dw.Reader().SeekPC(uint64(pc))
	if err != nil {
		return "", 0
	}
	lr, err := s.dw.LineReader(cu)
	if err != nil || lr == nil {
		return "", 0
	}
	// LineReader.SeekPC assumes the sequences are in address order; a
	// unit with code in IRAM and flash has them in any order. Walk them:
	// a row covers [its address, the next row's address) unless it ends
	// its sequence.
	var prev, e dwarf.LineEntry
	have := false
	for lr.Next(&e) == nil {
		if have && !prev.EndSequence && prev.Address <= uint64(pc) && uint64(pc) < e.Address && prev.File != nil {
			return prev.File.Name, prev.Line
		}
		prev, have = e, true
	}
	return "", 0
}

// frame names the frame at pc; an outer frame's pc is a return address,
// so its call is looked up one byte before it (as GDB does).
func (s *symbolizer) frame(pc uint32, outer bool) (fn, file string, line int) {
	look := pc
	if outer && look > 0 {
		look--
	}
	fn = s.function(look)
	file, line = s.line(look)
	return fn, file, line
}

// taskNameField finds FreeRTOS's TCB member pcTaskName (struct
// tskTaskControlBlock) in the DWARF types: its offset and length.
func (s *symbolizer) taskNameField() (off, size int64, ok bool) {
	if s.dw == nil {
		return 0, 0, false
	}
	r := s.dw.Reader()
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			return 0, 0, false
		}
		if e.Tag == dwarf.TagCompileUnit || !e.Children {
			continue
		}
		if e.Tag != dwarf.TagStructType || e.Val(dwarf.AttrName) != "tskTaskControlBlock" {
			r.SkipChildren()
			continue
		}
		for {
			m, err := r.Next()
			if err != nil || m == nil || m.Tag == 0 {
				break
			}
			if m.Children {
				r.SkipChildren()
			}
			if m.Tag != dwarf.TagMember || m.Val(dwarf.AttrName) != "pcTaskName" {
				continue
			}
			loc, ok1 := m.Val(dwarf.AttrDataMemberLoc).(int64)
			toff, ok2 := m.Val(dwarf.AttrType).(dwarf.Offset)
			if !ok1 || !ok2 {
				return 0, 0, false
			}
			t, err := s.dw.Type(toff)
			if err != nil || t.Size() <= 0 || t.Size() > 64 {
				return 0, 0, false
			}
			return loc, t.Size(), true
		}
	}
}
