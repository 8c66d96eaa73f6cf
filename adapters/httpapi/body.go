package httpapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
)

// Request bodies are streamed (fiber's StreamRequestBody): fasthttp reads
// at most a few KiB of a body before the handler runs, so the token is
// checked before anything large is read. Each route declares the largest
// body it takes (bodyLimit, before authentication); handlers read through
// readBody, which never holds more than that; and whatever the handler left
// unread is drained by observe, within DrainMaxBytes and DrainTimeout, so
// that a client which sends its whole body before reading (no
// Expect: 100-continue) receives the 401 or 413 instead of a reset.
//
// What fasthttp v1.51 does with StreamRequestBody (read in its source):
// it never refuses a body for its size (BodyLimit only decides how much is
// prefetched; a larger body is simply streamed), it waits for the first
// min(Content-Length, 8 KiB) bytes before calling the handler, it would
// read a whole multipart form before the handler unless
// DisablePreParseMultipartForm, and c.Body(), c.BodyRaw() and c.FormFile()
// read the entire stream without a bound. Whatever the handler leaves
// unread would be parsed as the next request on the connection: hence the
// drain, or Connection: close.

const localBodyLimit = "espmdm.body_limit"

// bodyLimit refuses, before authentication, a request whose declared
// Content-Length exceeds n, and records n for readBody.
func bodyLimit(n int64) fiber.Handler {
	return func(c *fiber.Ctx) error {
		c.Locals(localBodyLimit, n)
		if cl := c.Request().Header.ContentLength(); cl > 0 && int64(cl) > n {
			return tooLarge(n)
		}
		return c.Next()
	}
}

func tooLarge(limit int64) error {
	return &httpError{
		status: http.StatusRequestEntityTooLarge, kind: "too-large",
		detail: fmt.Sprintf("the request body exceeds this route's limit of %d bytes", limit),
	}
}

// routeBodyLimit is the limit bodyLimit recorded, or the JSON limit.
func (s *Server) routeBodyLimit(c *fiber.Ctx) int64 {
	if n, ok := c.Locals(localBodyLimit).(int64); ok {
		return n
	}
	return s.cfg.JSONMaxBytes
}

// readBody reads the whole request body, at most limit bytes: a larger one
// is a 413 however it is sent (Content-Length or chunked). The result is
// the caller's own copy.
func readBody(c *fiber.Ctx, limit int64) ([]byte, error) {
	req := c.Request()
	if cl := req.Header.ContentLength(); cl > 0 && int64(cl) > limit {
		return nil, tooLarge(limit)
	}
	if !req.IsBodyStream() {
		body := req.Body()
		if int64(len(body)) > limit {
			return nil, tooLarge(limit)
		}
		return bytes.Clone(body), nil
	}
	data, err := io.ReadAll(io.LimitReader(req.BodyStream(), limit+1))
	if err != nil {
		return nil, errBodyUnreadable
	}
	if int64(len(data)) > limit {
		return nil, tooLarge(limit)
	}
	return data, nil
}

// errBodyUnreadable is a body the client stopped sending, or sent as
// malformed chunks.
var errBodyUnreadable = badRequest("malformed-request", "the request body could not be read completely")

// bodyReader is the request body as a stream (nil when there is none).
func bodyReader(c *fiber.Ctx) io.Reader {
	req := c.Request()
	if req.IsBodyStream() {
		return req.BodyStream()
	}
	return bytes.NewReader(req.Body())
}

// multipartFirmware reads a firmware upload's multipart/form-data body as
// it streams in: the field "file" (at most fileLimit bytes, read whole) and,
// when the next field is "elf", a reader of it left unread: the caller
// streams it (its own limit is the caller's) after the image is checked.
// An "elf" before "file" is refused: the image says which ELF it takes.
// Other fields are skipped and count against the body's limit.
func multipartFirmware(c *fiber.Ctx, contentType string, fileLimit, elfLimit int64) (data []byte, elf io.Reader, err error) {
	_, params, err := mime.ParseMediaType(contentType)
	if err != nil || params["boundary"] == "" {
		return nil, nil, badRequest("malformed-request", "the multipart/form-data Content-Type has no boundary")
	}
	total := fileLimit + elfLimit + multipartOverhead
	body := &countingReader{r: io.LimitReader(bodyReader(c), total+1)}
	mr := multipart.NewReader(body, params["boundary"])
	malformed := func(err error) error {
		if body.n > total {
			return tooLarge(fileLimit) // cut off by the limit
		}
		return badRequest("malformed-request", "the multipart/form-data body is malformed")
	}
	for {
		part, err := mr.NextPart()
		switch {
		case errors.Is(err, io.EOF) && data == nil:
			return nil, nil, model.Invalid("file", "the multipart form needs a file field named \"file\"")
		case errors.Is(err, io.EOF):
			return data, nil, nil
		case err != nil:
			return nil, nil, malformed(err)
		}
		switch {
		case part.FormName() == "file" && data == nil:
			if data, err = io.ReadAll(io.LimitReader(part, fileLimit+1)); err != nil {
				return nil, nil, malformed(err)
			}
			if int64(len(data)) > fileLimit {
				return nil, nil, tooLarge(fileLimit)
			}
		case part.FormName() == "elf" && data == nil:
			return nil, nil, model.Invalid("elf", "send the \"file\" field before the \"elf\" field: the image names the ELF it was built from")
		case part.FormName() == "elf":
			return data, part, nil
		default:
			if _, err := io.Copy(io.Discard, part); err != nil {
				return nil, nil, malformed(err)
			}
		}
	}
}

// countingReader counts what was read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// drainBody reads and discards what the client is still sending of the
// request body, at most DrainMaxBytes and for at most DrainTimeout, and
// closes the connection after the response when that was not enough (or
// the body was not a valid stream). It runs before the response is written,
// so that a client busy sending its body is not reset before it reads the
// answer.
func (s *Server) drainBody(c *fiber.Ctx) {
	req := c.Request()
	cl := req.Header.ContentLength()
	if !req.IsBodyStream() || cl == 0 {
		return
	}
	if cl > 0 && int64(cl) > s.cfg.DrainMaxBytes {
		// Certainly more than the bound: no point reading any of it.
		c.Context().SetConnectionClose()
		return
	}
	if conn := c.Context().Conn(); conn != nil {
		_ = conn.SetReadDeadline(time.Now().Add(s.cfg.DrainTimeout))
	}
	n, err := io.Copy(io.Discard, io.LimitReader(req.BodyStream(), s.cfg.DrainMaxBytes+1))
	if err != nil || n > s.cfg.DrainMaxBytes {
		c.Context().SetConnectionClose()
	}
}
