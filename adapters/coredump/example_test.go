package coredump_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/espmdm/espmdm/adapters/coredump"
	"github.com/espmdm/espmdm/core/model"
)

// A worker's view: read what the dump names, open that ELF, analyse, and
// tell the outcomes apart.
func Example() {
	ctx := context.Background()
	a := coredump.New(coredump.Config{}) // COREDUMP_TOOL, COREDUMP_GDB: the defaults
	if err := a.Check(ctx); err != nil {
		fmt.Println("core dumps stay pending:", err) // say so at start
	}

	dump, err := os.ReadFile("testdata/esp32c3.coredump")
	if err != nil {
		panic(err)
	}
	info, err := model.ReadCoredumpInfo(dump) // at upload time
	if err != nil {
		panic(err)
	}
	fmt.Println(info.Chip, "names the ELF", info.ELFSHA256Prefix) // find it among the model's uploads

	elf, err := os.Open("testdata/esp32c3.elf")
	if err != nil {
		panic(err)
	}
	defer elf.Close()
	res, err := a.Analyze(ctx, dump, elf)
	var failed *model.CoredumpFailedError
	switch {
	case errors.Is(err, model.ErrCoredumpToolMissing):
		fmt.Println("pending:", err)
	case errors.As(err, &failed):
		fmt.Println("failed:", failed.Reason)
	case err != nil:
		fmt.Println("try again later:", err)
	default:
		crash, _ := res.CrashFrame()
		fmt.Printf("analysed: %s at %s:%d\n", crash.Function, crash.File, crash.Line)
	}
}
