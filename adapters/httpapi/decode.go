package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"

	"github.com/espmdm/espmdm/core/model"
)

// decodeJSON strictly decodes the request body into dst: a JSON content
// type (or none), one object, no unknown members, no trailing data, at most
// the route's body limit. Error details are written here, never copied from the
// decoder beyond the member name.
func (s *Server) decodeJSON(c *fiber.Ctx, dst any) error {
	if err := requireIdentityEncoding(c); err != nil {
		return err
	}
	if ct := c.Get(fiber.HeaderContentType); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != fiber.MIMEApplicationJSON && !strings.HasSuffix(mt, "+json")) {
			return unsupportedMediaType("send a JSON body with Content-Type: application/json")
		}
	}
	body, err := readBody(c, s.routeBodyLimit(c))
	if err != nil {
		return err
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return errMalformedJSON("the request body is empty: expected a JSON object")
	}
	if trimmed[0] != '{' {
		// null, an array, a string...: every JSON body here is an object.
		return errMalformedJSON("malformed JSON: expected a JSON object")
	}
	if !utf8.Valid(body) {
		// JSON is UTF-8 (RFC 8259), and the database refuses anything else.
		return errMalformedJSON("the JSON body is not valid UTF-8")
	}
	if err := exactMembers(body, dst); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return errMalformedJSON(describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errMalformedJSON("malformed JSON: unexpected data after the JSON object")
	}
	return nil
}

// exactMembers checks the member names of a top-level JSON object against
// the json tags of the struct dst points to: encoding/json matches names
// case-insensitively ("Config" fills config) and lets a repeated member
// overwrite the first, and neither may pass unnoticed. Bodies that are not
// an object are left to the decoder's own error.
func exactMembers(body []byte, dst any) error {
	t := reflect.TypeOf(dst)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil
	}
	known := map[string]bool{}
	for f := range t.Elem().Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name != "" && name != "-" {
			known[name] = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		name, _ := tok.(string)
		switch {
		case !known[name] && len(name) <= 64:
			return errMalformedJSON(fmt.Sprintf("unknown member %q in the JSON object (member names are case-sensitive)", name))
		case !known[name]:
			return errMalformedJSON("the JSON object has an unknown member")
		case seen[name]:
			return errMalformedJSON(fmt.Sprintf("member %q appears twice in the JSON object", name))
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

func describeJSONError(err error) string {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte offset %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return fmt.Sprintf("malformed JSON: expected a JSON object, got %s", typ.Value)
		}
		return fmt.Sprintf("malformed JSON: member %q must not be %s", typ.Field, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: the body ends in the middle of a value"
	}
	const unknown = "json: unknown field "
	if msg := err.Error(); strings.HasPrefix(msg, unknown) {
		name, uerr := strconv.Unquote(strings.TrimPrefix(msg, unknown))
		if uerr == nil && len(name) <= 64 {
			return fmt.Sprintf("unknown member %q in the JSON object", name)
		}
		return "the JSON object has an unknown member"
	}
	return "malformed JSON body"
}

func unsupportedMediaType(detail string) error {
	return &httpError{status: http.StatusUnsupportedMediaType, kind: "unsupported-media-type", detail: detail}
}

// requireIdentityEncoding refuses compressed request bodies: their decoded
// size is not bounded by BodyLimit.
func requireIdentityEncoding(c *fiber.Ctx) error {
	if enc := strings.TrimSpace(c.Get(fiber.HeaderContentEncoding)); enc != "" && !strings.EqualFold(enc, "identity") {
		return unsupportedMediaType("compressed request bodies (Content-Encoding) are not accepted")
	}
	return nil
}

// pathID parses the :id route parameter: a positive integer (see intText).
func pathID(c *fiber.Ctx) (int64, error) {
	id, ok := intText(c.Params("id"))
	if !ok || id <= 0 {
		return 0, model.Invalid("id", "must be a positive integer")
	}
	return id, nil
}

// List cursors are opaque to clients: "c1." and the last id of the page
// XOR cursorMask, as 16 lower-case hex digits. Ids are non-negative int64s
// and the mask keeps the top bit clear, so cursorPattern is the form
// exactly, as the OpenAPI document declares it: every string it matches
// decodes (to a non-negative id), every other one is refused.
const (
	cursorPrefix  = "c1."
	cursorPattern = `^c1\.[0-7][0-9a-f]{15}$`
	cursorMask    = 0x5a3c96e1f0d2b487
)

var cursorRE = regexp.MustCompile(cursorPattern)

func encodeCursor(afterID int64) string {
	return fmt.Sprintf("%s%016x", cursorPrefix, uint64(afterID)^cursorMask)
}

func decodeCursor(s string) (int64, error) {
	if !cursorRE.MatchString(s) {
		return 0, model.Invalid("cursor", "not a cursor returned by this API")
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(s, cursorPrefix), 16, 64)
	if err != nil {
		return 0, model.Invalid("cursor", "not a cursor returned by this API")
	}
	return int64(v ^ cursorMask), nil
}

// queryParams maps "METHOD /template" to the query parameters the OpenAPI
// document declares for it.
func queryParams() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, op := range allOperations() {
		for _, p := range op.params {
			if p["in"] != "query" {
				continue
			}
			key := op.method + " " + op.path
			if out[key] == nil {
				out[key] = map[string]bool{}
			}
			out[key][p["name"].(string)] = true
		}
	}
	return out
}

// checkQuery refuses a declared query parameter given without a value
// (?limit=): no declared parameter has an empty string among its values,
// and treating it as absent would accept what the document calls invalid.
func (s *Server) checkQuery(c *fiber.Ctx) error {
	declared := s.query[c.Method()+" "+routeTemplate(c.Route().Path)]
	var bad string
	c.Context().QueryArgs().VisitAll(func(k, v []byte) {
		if bad == "" && len(v) == 0 && declared[string(k)] {
			bad = string(k)
		}
	})
	if bad != "" {
		return model.Invalid(bad, "must not be empty (leave the parameter out instead)")
	}
	return nil
}
