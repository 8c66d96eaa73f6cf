package coredump

import (
	"regexp"
	"strconv"
	"strings"

	"github.com/espmdm/espmdm/core/model"
)

// report is what parseReport reads from esp-coredump's info_corefile text.
type report struct {
	crashedTask string
	panicReason string
	isr         bool
	frames      []model.CoredumpFrame
}

var (
	// A section header: "==================== CURRENT THREAD STACK =====================".
	sectionRe = regexp.MustCompile(`^=+ (.+?) =+$`)
	// "Crashed task handle: 0x3fc8ec30, name: 'main', GDB name: 'process 1070132272'".
	crashedRe = regexp.MustCompile(`^Crashed task handle: 0x[0-9a-fA-F]+, name: '(.*)', GDB name:`)
	// "pc             0x40380698	0x40380698 <panic_abort+18>".
	pcRe = regexp.MustCompile(`^pc\s+0x([0-9a-fA-F]+)\b`)
	// "#3  0x42009354 in fail_once (unused=<optimized out>) at .../test_core_dump.c:14";
	// the address is absent when the frame's PC is at the start of a line
	// (frame 0) or the frame is inlined into the next one.
	// GDB without the chip's registers prints "#0  <unavailable> in ?? ()".
	frameRe = regexp.MustCompile(`^#(\d+)\s+(?:(?:0x([0-9a-fA-F]+)|<unavailable>) in )?(.+?) \(`)
	// The location after the arguments' closing parenthesis.
	locRe = regexp.MustCompile(`^\) at (.+):(\d+)$`)
)

// parseReport reads the crashed task, the panic reason and the crashed
// task's backtrace (the CURRENT THREAD STACK section) from esp-coredump's
// text. Lines it does not know are skipped: it never fails.
func parseReport(text string) report {
	var r report
	var section string
	var pc uint32
	var hasPC bool
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimRight(line, "\r")
		if m := sectionRe.FindStringSubmatch(line); m != nil {
			section = m[1]
			continue
		}
		switch section {
		case "ESP32 CORE DUMP START":
			if m := crashedRe.FindStringSubmatch(line); m != nil {
				r.crashedTask = m[1]
			} else if s, ok := strings.CutPrefix(line, "Panic reason: "); ok {
				r.panicReason = strings.TrimSpace(s)
			} else if strings.HasPrefix(line, "Crash happened in the interrupt context") {
				r.isr = true
			}
		case "CURRENT THREAD REGISTERS":
			if m := pcRe.FindStringSubmatch(line); m != nil {
				if v, err := strconv.ParseUint(m[1], 16, 32); err == nil {
					pc, hasPC = uint32(v), true
				}
			}
		case "CURRENT THREAD STACK":
			if f, ok := parseFrame(line); ok {
				switch {
				case f.PC != 0:
				case len(r.frames) == 0 && hasPC:
					f.PC = pc
				case len(r.frames) > 0:
					f.PC = r.frames[len(r.frames)-1].PC // inlined into the frame above
				}
				r.frames = append(r.frames, f)
			}
		}
	}
	return r
}

// parseFrame reads one GDB backtrace line.
func parseFrame(line string) (model.CoredumpFrame, bool) {
	m := frameRe.FindStringSubmatch(line)
	if m == nil {
		return model.CoredumpFrame{}, false
	}
	var f model.CoredumpFrame
	if m[2] != "" {
		v, err := strconv.ParseUint(m[2], 16, 32)
		if err != nil {
			return model.CoredumpFrame{}, false
		}
		f.PC = uint32(v)
	}
	if m[3] != "??" {
		f.Function = m[3]
	}
	// The location follows the last ") at ": an argument's string may
	// itself say " at ".
	if i := strings.LastIndex(line, ") at "); i >= 0 {
		if l := locRe.FindStringSubmatch(line[i:]); l != nil {
			if n, err := strconv.Atoi(l[2]); err == nil {
				f.File, f.Line = l[1], n
			}
		}
	}
	return f, true
}
