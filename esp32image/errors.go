package esp32image

import (
	"errors"
	"fmt"
)

// ErrFormat is wrapped by every error that describes malformed or invalid
// image bytes. Test for it with errors.Is.
var ErrFormat = errors.New("esp32image: invalid image")

// FormatError reports a problem with the image bytes at a file offset.
// It matches ErrFormat with errors.Is.
type FormatError struct {
	Off int64  // offset in the image of the offending field or structure
	Msg string // what is wrong
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("esp32image: at offset 0x%x: %s", e.Off, e.Msg)
}

// Is reports whether target is ErrFormat.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

func formatErr(off int64, format string, args ...any) *FormatError {
	return &FormatError{Off: off, Msg: fmt.Sprintf(format, args...)}
}
