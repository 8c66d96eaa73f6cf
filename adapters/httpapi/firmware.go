package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// serveFirmware sends a firmware binary with conditional and range
// support: ETag is the quoted SHA-256; If-None-Match gives 304; a single
// byte range gives 206, guarded by If-Range. A Range it does not honour
// (several ranges, a malformed one, or one that starts past the end) is
// ignored and the whole file sent with 200, as RFC 9110 §14.2 allows: a
// range past the end depends on the file's size, which no client can tell
// from the API document (an OTA resume sees the 200 and starts over). The
// blob is closed in every case.
func serveFirmware(c *fiber.Ctx, modelCode string, fw model.Firmware, blob ports.Blob) error {
	handedOff := false
	defer func() {
		if !handedOff {
			_ = blob.Close()
		}
	}()

	size := blob.Size()
	etag := `"` + fw.SHA256 + `"`
	lastMod := fw.UploadedAt.UTC().Truncate(time.Second)

	if inm := c.Get(fiber.HeaderIfNoneMatch); inm != "" && etagListMatches(inm, etag) {
		c.Set(fiber.HeaderETag, etag)
		return c.SendStatus(fiber.StatusNotModified)
	}

	start, length, status := int64(0), size, fiber.StatusOK
	if rh := c.Get(fiber.HeaderRange); rh != "" && ifRangeHolds(c.Get(fiber.HeaderIfRange), etag, lastMod) {
		if first, n, ok, satisfiable := parseRange(rh, size); ok && satisfiable {
			start, length, status = first, n, fiber.StatusPartialContent
		}
	}
	if start > 0 {
		if _, err := blob.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("seeking firmware: %w", err)
		}
	}

	c.Set(fiber.HeaderETag, etag)
	c.Set(fiber.HeaderLastModified, lastMod.Format(http.TimeFormat))
	c.Set(fiber.HeaderAcceptRanges, "bytes")
	c.Set(fiber.HeaderContentType, fiber.MIMEOctetStream)
	c.Set(fiber.HeaderContentDisposition, fmt.Sprintf(`attachment; filename="%s"`, firmwareFileName(modelCode, fw.Version)))
	c.Set(fiber.HeaderCacheControl, "no-cache")
	if status == fiber.StatusPartialContent {
		c.Set(fiber.HeaderContentRange, fmt.Sprintf("bytes %d-%d/%d", start, start+length-1, size))
	}
	c.Status(status)
	// fasthttp closes the stream once the response is written.
	c.Context().SetBodyStream(limitedReadCloser{io.LimitReader(blob, length), blob}, int(length))
	handedOff = true
	return nil
}

type limitedReadCloser struct {
	io.Reader
	io.Closer
}

// firmwareFileName is "<code>-<version>.bin" with anything outside
// [A-Za-z0-9._-] replaced, so the header needs no quoting rules.
func firmwareFileName(code, version string) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
				return r
			}
			return '_'
		}, s)
	}
	if version == "" {
		return clean(code) + ".bin"
	}
	return clean(code) + "-" + clean(version) + ".bin"
}

// etagListMatches applies If-None-Match's weak comparison.
func etagListMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

// ifRangeHolds reports whether a Range header may be honoured: no If-Range,
// a strongly matching entity tag, or the exact Last-Modified date.
func ifRangeHolds(ifRange, etag string, lastMod time.Time) bool {
	ifRange = strings.TrimSpace(ifRange)
	switch {
	case ifRange == "":
		return true
	case strings.HasPrefix(ifRange, `"`):
		return ifRange == etag
	case strings.HasPrefix(ifRange, "W/"):
		return false // weak tags never match If-Range
	}
	t, err := http.ParseTime(ifRange)
	return err == nil && t.Equal(lastMod)
}

// parseRange parses a single "bytes=" range against size. ok is false for
// a header to ignore (syntax errors, other units, several ranges);
// satisfiable is false for a well-formed range past the end.
func parseRange(h string, size int64) (start, length int64, ok, satisfiable bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(h), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, false
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, false
	}
	if first == "" { // suffix range: the last N bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false, false
		}
		if n == 0 || size == 0 {
			return 0, 0, true, false
		}
		n = min(n, size)
		return size - n, n, true, true
	}
	s, err := strconv.ParseInt(first, 10, 64)
	if err != nil || s < 0 {
		return 0, 0, false, false
	}
	e := size - 1
	if last != "" {
		e, err = strconv.ParseInt(last, 10, 64)
		if err != nil || e < s {
			return 0, 0, false, false
		}
		e = min(e, size-1)
	}
	if s >= size {
		return 0, 0, true, false
	}
	return s, e - s + 1, true, true
}
