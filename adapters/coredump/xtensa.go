package coredump

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/espmdm/espmdm/core/model"
)

// The ESP-IDF ELF core file, as checked against real ESP32 and ESP32-C3
// dumps: one NT_PRSTATUS note ("CORE") per task, the crashed task first,
// pr_pid (offset 24) holding the task's TCB address and pr_reg (offset 72)
// its registers; one PT_LOAD segment per TCB and per stack. On Xtensa
// pr_reg is pc, ps, lbeg, lend, lcount, sar, windowstart, windowbase, 56
// reserved words, then the address registers a0..a63 with the current
// window first (so a0 is word 64 and a1, the stack pointer, word 65). The
// ESP_EXTRA_INFO note holds the crashed task's TCB and then (special
// register number, value) pairs: EXCCAUSE, EXCVADDR, EPC1...
const (
	prPIDOff       = 24
	prRegOff       = 72
	xtRegPC        = 0
	xtRegA0        = 64
	xtRegA1        = 65
	xtSRExcCause   = 232
	xtSRExcVAddr   = 238
	noteESPExtra   = 677
	maxFrames      = 64
	maxCoreSegment = 16 << 20
)

type memSeg struct {
	addr uint32
	data []byte
}

type coreTask struct {
	tcb  uint32
	regs []uint32
}

type coreFile struct {
	segs       []memSeg
	tasks      []coreTask
	crashedTCB uint32
	hasCrashed bool
	extra      []uint32 // ESP_EXTRA_INFO words after the TCB
}

// readCore reads the tasks, memory and extra info of an ELF core file.
func readCore(b []byte) (*coreFile, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("the dump's ELF core file: %w", err)
	}
	if f.Type != elf.ET_CORE || f.Class != elf.ELFCLASS32 {
		return nil, errors.New("the dump's ELF core file is not a 32-bit core file")
	}
	c := &coreFile{}
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD && p.Type != elf.PT_NOTE {
			continue
		}
		if p.Filesz > maxCoreSegment || p.Filesz > uint64(len(b)) {
			return nil, fmt.Errorf("the dump's segment at 0x%x is %d bytes", p.Vaddr, p.Filesz)
		}
		data, err := io.ReadAll(p.Open())
		if err != nil || uint64(len(data)) != p.Filesz {
			return nil, fmt.Errorf("the dump's segment at 0x%x runs past its end", p.Vaddr)
		}
		if p.Type == elf.PT_LOAD {
			c.segs = append(c.segs, memSeg{addr: uint32(p.Vaddr), data: data})
			continue
		}
		c.readNotes(data)
	}
	if len(c.tasks) == 0 {
		return nil, errors.New("the dump holds no task registers")
	}
	return c, nil
}

// readNotes takes the task and extra-info notes of one note segment; it
// stops at the first malformed note.
func (c *coreFile) readNotes(seg []byte) {
	le := binary.LittleEndian
	for pos := 0; len(seg)-pos >= 12; {
		namesz, descsz := int(le.Uint32(seg[pos:])), int(le.Uint32(seg[pos+4:]))
		typ := le.Uint32(seg[pos+8:])
		if namesz < 0 || descsz < 0 || namesz > len(seg) || descsz > len(seg) {
			return
		}
		descOff := pos + 12 + (namesz+3)&^3
		if descOff+descsz > len(seg) {
			return
		}
		name := string(bytes.TrimRight(seg[pos+12:pos+12+namesz], "\x00"))
		desc := seg[descOff : descOff+descsz]
		switch {
		case typ == uint32(elf.NT_PRSTATUS) && name == "CORE" && len(desc) >= prRegOff+4:
			t := coreTask{tcb: le.Uint32(desc[prPIDOff:])}
			for i := prRegOff; i+4 <= len(desc); i += 4 {
				t.regs = append(t.regs, le.Uint32(desc[i:]))
			}
			c.tasks = append(c.tasks, t)
		case typ == noteESPExtra && name == "ESP_EXTRA_INFO" && len(desc) >= 4:
			c.crashedTCB, c.hasCrashed = le.Uint32(desc), true
			for i := 4; i+4 <= len(desc); i += 4 {
				c.extra = append(c.extra, le.Uint32(desc[i:]))
			}
		}
		pos = descOff + (descsz+3)&^3
	}
}

// read reads n bytes at addr from the dump's memory.
func (c *coreFile) read(addr uint32, n int) ([]byte, bool) {
	for _, s := range c.segs {
		if addr >= s.addr && uint64(addr-s.addr)+uint64(n) <= uint64(len(s.data)) {
			off := addr - s.addr
			return s.data[off : off+uint32(n)], true
		}
	}
	return nil, false
}

func (c *coreFile) read32(addr uint32) (uint32, bool) {
	b, ok := c.read(addr, 4)
	if !ok {
		return 0, false
	}
	return binary.LittleEndian.Uint32(b), true
}

// crashed is the crashed task: the one ESP_EXTRA_INFO names, else the
// first.
func (c *coreFile) crashed() coreTask {
	if c.hasCrashed {
		for _, t := range c.tasks {
			if t.tcb == c.crashedTCB {
				return t
			}
		}
	}
	return c.tasks[0]
}

// exceptionReg is a special register from ESP_EXTRA_INFO.
func (c *coreFile) exceptionReg(num uint32) (uint32, bool) {
	for i := 0; i+1 < len(c.extra); i += 2 {
		if c.extra[i] == num {
			return c.extra[i+1], true
		}
	}
	return 0, false
}

// xtensaWalk follows the windowed ABI's call chain from pc, a0 (the return
// address, its top two bits holding the caller's window increment) and a1
// (the stack pointer): each caller's a0 and a1 are spilled to the 16-byte
// base save area just below the callee's stack pointer. It returns the
// frames' PCs, innermost first: pc, then the return addresses with their
// top bits restored. It stops at a zero return address, a stack pointer
// that does not grow towards the caller, memory the dump does not hold, or
// maxFrames.
func xtensaWalk(c *coreFile, pc, a0, a1 uint32) []uint32 {
	pcs := []uint32{pc}
	ra, sp := a0, a1
	for len(pcs) < maxFrames && ra != 0 {
		pcs = append(pcs, ra&0x3FFFFFFF|0x40000000)
		nextRA, ok1 := c.read32(sp - 16)
		nextSP, ok2 := c.read32(sp - 12)
		if !ok1 || !ok2 || nextSP <= sp {
			break
		}
		ra, sp = nextRA, nextSP
	}
	return pcs
}

// ownTrace is the Xtensa analysis espmdm makes itself.
type ownTrace struct {
	frames   []model.CoredumpFrame
	task     string
	tcb      uint32
	excCause *uint32
	excVAddr *uint32
}

// xtensaBacktrace reads the crashed task's registers and stack from the
// dump's ELF core file and names its frames from the application ELF.
func xtensaBacktrace(core []byte, elfPath string) (tr *ownTrace, err error) {
	// debug/elf and debug/dwarf read the dump and the ELF; neither should
	// panic on bad input, but a dump is a device's word: never let one
	// take the server down.
	defer func() {
		if r := recover(); r != nil {
			tr, err = nil, fmt.Errorf("reading the dump or the ELF failed: %v", r)
		}
	}()
	c, err := readCore(core)
	if err != nil {
		return nil, err
	}
	t := c.crashed()
	if len(t.regs) <= xtRegA1 {
		return nil, fmt.Errorf("the crashed task's registers are %d words, not Xtensa's", len(t.regs))
	}
	pcs := xtensaWalk(c, t.regs[xtRegPC], t.regs[xtRegA0], t.regs[xtRegA1])
	sym, err := openSymbolizer(elfPath)
	if err != nil {
		return nil, err
	}
	tr = &ownTrace{tcb: t.tcb}
	for i, pc := range pcs {
		fn, file, line := sym.frame(pc, i > 0)
		tr.frames = append(tr.frames, model.CoredumpFrame{PC: pc, Function: fn, File: file, Line: line})
	}
	tr.task = taskName(c, sym, t.tcb)
	if v, ok := c.exceptionReg(xtSRExcCause); ok {
		tr.excCause = &v
	}
	if v, ok := c.exceptionReg(xtSRExcVAddr); ok {
		tr.excVAddr = &v
	}
	return tr, nil
}

// taskName reads the task's name from its TCB in the dump, at the offset
// the ELF's DWARF gives pcTaskName.
func taskName(c *coreFile, sym *symbolizer, tcb uint32) string {
	off, size, ok := sym.taskNameField()
	if !ok {
		return ""
	}
	b, ok := c.read(tcb+uint32(off), int(size))
	if !ok {
		return ""
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	for _, ch := range b {
		if ch < 0x20 || ch > 0x7e {
			return ""
		}
	}
	return string(b)
}

// xtensaCauses names the common EXCCAUSE values (Xtensa ISA).
var xtensaCauses = map[uint32]string{
	0: "IllegalInstruction", 2: "InstructionFetchError", 3: "LoadStoreError",
	6: "IntegerDivideByZero", 9: "LoadStoreAlignment", 20: "InstFetchProhibited",
	28: "LoadProhibited", 29: "StoreProhibited",
}

// text is the section espmdm puts before the tool's text.
func (tr *ownTrace) text(a model.CoredumpAnalysis) string {
	var b strings.Builder
	b.WriteString("==================== ESPMDM: CRASHED TASK BACKTRACE (read from the stack) ====================\n")
	fmt.Fprintf(&b, "Crashed task: '%s' (TCB 0x%08x)\n", tr.task, tr.tcb)
	if a.PanicReason != "" {
		fmt.Fprintf(&b, "Panic reason: %s\n", a.PanicReason)
	}
	if tr.excCause != nil {
		name := xtensaCauses[*tr.excCause]
		if name == "" {
			name = "see the Xtensa ISA"
		}
		fmt.Fprintf(&b, "EXCCAUSE 0x%x (%s)", *tr.excCause, name)
		if tr.excVAddr != nil {
			fmt.Fprintf(&b, ", EXCVADDR 0x%08x", *tr.excVAddr)
		}
		b.WriteString("\n")
	}
	for i, f := range tr.frames {
		fn := f.Function
		if fn == "" {
			fn = "??"
		}
		fmt.Fprintf(&b, "#%-2d 0x%08x in %s", i, f.PC, fn)
		if f.File != "" {
			fmt.Fprintf(&b, " at %s:%d", f.File, f.Line)
		}
		b.WriteString("\n")
	}
	return b.String()
}
