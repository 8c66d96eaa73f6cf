package coredump

import (
	"bufio"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/espmdm/espmdm/core/model"
)

// What Espressif's own run of esp-coredump printed for the C3 dump (with
// their GDB and the ROM ELF): every frame named.
func TestParseReportEspressifOutput(t *testing.T) {
	b, err := os.ReadFile("testdata/esp32c3.espressif-output.txt")
	if err != nil {
		t.Fatal(err)
	}
	r := parseReport(string(b))
	if r.crashedTask != "main" || r.panicReason != "abort() was called at PC 0x42009351 on core 0" || r.isr {
		t.Errorf("task %q, reason %q, isr %v", r.crashedTask, r.panicReason, r.isr)
	}
	type fr struct {
		pc   uint32
		fn   string
		file string
		line int
	}
	want := []fr{
		{0x40380698, "panic_abort", "panic.c", 472},
		{0x4038368e, "esp_system_abort", "esp_system_chip.c", 93},
		{0x403887b8, "abort", "abort.c", 38},
		{0x42009354, "fail_once", "test_core_dump.c", 14},
		{0x400485e4, "ets_vprintf", "", 0},
		{0x40048722, "ets_printf", "", 0},
		{0x4200937a, "app_main", "test_core_dump.c", 20},
		{0x420176ba, "main_task", "app_startup.c", 208},
		{0x40384088, "vPortTaskWrapper", "port.c", 255},
	}
	var got []fr
	for _, f := range r.frames {
		base := ""
		if f.File != "" {
			base = filepath.Base(f.File)
		}
		got = append(got, fr{f.PC, f.Function, base, f.Line})
	}
	if !slices.Equal(got, want) {
		t.Errorf("frames\n got %+v\nwant %+v", got, want)
	}
}

func TestParseFrame(t *testing.T) {
	tests := []struct {
		line string
		want model.CoredumpFrame
		ok   bool
	}{
		{`#4  0x400485e4 in ?? ()`, model.CoredumpFrame{PC: 0x400485e4}, true},
		{`#2  vPortExitCritical (mux=<optimized out>) at /idf/port.c:532`, model.CoredumpFrame{Function: "vPortExitCritical", File: "/idf/port.c", Line: 532}, true},
		{`#1  0x4000abcd in log_it (msg=0x3f "x) at fake.c:1") at /src/real.c:7`, model.CoredumpFrame{PC: 0x4000abcd, Function: "log_it", File: "/src/real.c", Line: 7}, true},
		{`#3  0x4000beef in ets_printf ()`, model.CoredumpFrame{PC: 0x4000beef, Function: "ets_printf"}, true},
		{`#12 0x42001000 in ns::Cls::run (this=0x3fc80000) at /src/a b.cpp:9`, model.CoredumpFrame{PC: 0x42001000, Function: "ns::Cls::run", File: "/src/a b.cpp", Line: 9}, true},
		{`#0  <unavailable> in ?? ()`, model.CoredumpFrame{}, true},
		{`Backtrace stopped: frame did not save the PC`, model.CoredumpFrame{}, false},
		{`#1  0x1ffffffff in f ()`, model.CoredumpFrame{}, false},
	}
	for _, tt := range tests {
		got, ok := parseFrame(tt.line)
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseFrame(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

func TestParseReportInterruptAndInlined(t *testing.T) {
	text := strings.Join([]string{
		"===============================================================",
		"==================== ESP32 CORE DUMP START ====================",
		"Crashed task handle: 0x3ffaf354, name: 'ipc0', GDB name: 'process 1073411924'",
		"Crash happened in the interrupt context",
		"================== CURRENT THREAD REGISTERS ===================",
		"pc             0x4000bff0          0x4000bff0",
		"==================== CURRENT THREAD STACK =====================",
		"#0  _xtos_set_intlevel ()",
		"#1  0x400877a0 in vPortClearInterruptMaskFromISR (prev_level=<optimized out>) at portmacro.h:568",
		"#2  vPortExitCritical (mux=<optimized out>) at port.c:532",
		"======================== THREADS INFO =========================",
		"#0  0x12345678 in not_the_crashed_thread ()",
	}, "\n")
	r := parseReport(text)
	want := []model.CoredumpFrame{
		{PC: 0x4000bff0, Function: "_xtos_set_intlevel"},
		{PC: 0x400877a0, Function: "vPortClearInterruptMaskFromISR", File: "portmacro.h", Line: 568},
		{PC: 0x400877a0, Function: "vPortExitCritical", File: "port.c", Line: 532},
	}
	if r.crashedTask != "ipc0" || !r.isr || !slices.Equal(r.frames, want) {
		t.Errorf("got %+v", r)
	}
	if r := parseReport("garbage\n#0 \n====\n"); len(r.frames) != 0 || r.crashedTask != "" {
		t.Errorf("garbage: got %+v", r)
	}
}

// The symbolizer names the C3 dump's frames as GDB does.
func TestSymbolizerMatchesGDB(t *testing.T) {
	s, err := openSymbolizer("testdata/esp32c3.elf")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		pc    uint32
		outer bool
		fn    string
		file  string
		line  int
	}{
		{0x40380698, false, "panic_abort", "panic.c", 472},
		{0x4038368e, true, "esp_system_abort", "esp_system_chip.c", 93},
		{0x403887b8, true, "abort", "abort.c", 38},
		{0x42009354, true, "fail_once", "test_core_dump.c", 14},
		{0x4200937a, true, "app_main", "test_core_dump.c", 20},
		{0x420176ba, true, "main_task", "app_startup.c", 208},
		{0x40384088, true, "vPortTaskWrapper", "port.c", 255},
		{0x400485e4, true, "", "", 0}, // ROM: not in the ELF
	}
	for _, tt := range tests {
		fn, file, line := s.frame(tt.pc, tt.outer)
		if file != "" {
			file = filepath.Base(file)
		}
		if fn != tt.fn || file != tt.file || line != tt.line {
			t.Errorf("frame(0x%x) = %s %s:%d, want %s %s:%d", tt.pc, fn, file, line, tt.fn, tt.file, tt.line)
		}
	}
	off, size, ok := s.taskNameField()
	if !ok || off != 0x34 || size != 16 {
		t.Errorf("taskNameField() = %d, %d, %v; want 0x34, 16 (FreeRTOS's TCB)", off, size, ok)
	}

	dump, err := os.ReadFile("testdata/esp32c3.coredump")
	if err != nil {
		t.Fatal(err)
	}
	info, err := model.ReadCoredumpInfo(dump)
	if err != nil {
		t.Fatal(err)
	}
	c, err := readCore(dump[info.ELFOffset : info.ELFOffset+info.ELFLength])
	if err != nil {
		t.Fatal(err)
	}
	if len(c.tasks) != 3 || c.crashed().tcb != 0x3fc8ec30 || c.crashed().regs[0] != 0x40380698 {
		t.Errorf("tasks %d, crashed %+v", len(c.tasks), c.crashed())
	}
	names := []string{}
	for _, task := range c.tasks {
		names = append(names, taskName(c, s, task.tcb))
	}
	if !slices.Equal(names, []string{"main", "IDLE", "esp_timer"}) {
		t.Errorf("task names %q", names)
	}
	if _, err := xtensaBacktrace(dump[info.ELFOffset:info.ELFOffset+info.ELFLength], "testdata/esp32c3.elf"); err == nil {
		t.Errorf("xtensaBacktrace of a RISC-V dump: no error")
	}
}

// The windowed-ABI walk over a real ESP32 stack gives GDB's frames.
func TestXtensaWalkMatchesGDB(t *testing.T) {
	f, err := os.Open("testdata/esp32-stack.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	regs := map[string]uint32{}
	var want []uint32
	var seg memSeg
	hex := func(s string) uint32 {
		v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		return uint32(v)
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 0 || strings.HasPrefix(fields[0], "#"):
		case fields[0] == "backtrace":
			for _, s := range fields[1:] {
				want = append(want, hex(s))
			}
		case strings.HasSuffix(fields[0], ":"):
			addr := hex(strings.TrimSuffix(fields[0], ":"))
			if seg.data == nil {
				seg.addr = addr
			} else if addr != seg.addr+uint32(len(seg.data)) {
				t.Fatalf("line at 0x%x is not contiguous", addr)
			}
			for _, w := range fields[1:] {
				seg.data = binary.LittleEndian.AppendUint32(seg.data, hex(w))
			}
		default:
			regs[fields[0]] = hex(fields[1])
		}
	}
	c := &coreFile{segs: []memSeg{seg}}
	got := xtensaWalk(c, regs["pc"], regs["a0"], regs["a1"])
	if !slices.Equal(got, want) {
		t.Errorf("walk\n got %x\nwant %x", got, want)
	}
	// Stack memory the dump does not hold ends the walk after the frame
	// the registers give.
	if got := xtensaWalk(&coreFile{}, regs["pc"], regs["a0"], regs["a1"]); !slices.Equal(got, want[:2]) {
		t.Errorf("walk without memory = %x, want %x", got, want[:2])
	}
	// A loop in the saved stack pointers stops at once.
	loop := &coreFile{segs: []memSeg{{addr: 0x3ffb0000, data: binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0x80001234), 0x3ffb0010)}}}
	if got := xtensaWalk(loop, 0x40000000, 0x80005678, 0x3ffb0010); !slices.Equal(got, []uint32{0x40000000, 0x40005678}) {
		t.Errorf("walk of a looping stack = %x, want the two frames before the loop", got)
	}
}

func TestCleanMakesStorableText(t *testing.T) {
	for in, want := range map[string]string{
		"plain":                  "plain",
		"bad \xff byte":          "bad \uFFFD byte",
		"nul\x00inside":          "nul\uFFFDinside",
		"details=0x3f \"\xc3(\"": "details=0x3f \"\uFFFD(\"",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseReport(f *testing.F) {
	b, err := os.ReadFile("testdata/esp32c3.espressif-output.txt")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b))
	f.Add("==================== CURRENT THREAD STACK =====================\n#0  <unavailable> in ?? ()\n#1  f (x=\") at y:1\") at z.c:2")
	f.Fuzz(func(t *testing.T, text string) {
		r := parseReport(text)
		if len(r.frames) > strings.Count(text, "#")+1 {
			t.Fatalf("%d frames from %d '#'", len(r.frames), strings.Count(text, "#"))
		}
		for _, fr := range r.frames {
			if fr.Line < 0 || strings.Contains(fr.Function, "\n") {
				t.Fatalf("frame %+v", fr)
			}
		}
	})
}
