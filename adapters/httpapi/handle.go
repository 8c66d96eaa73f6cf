package httpapi

import (
	"context"

	"github.com/gofiber/fiber/v2"
)

// The shapes of the admin handlers. Each helper reads the call's input from
// the request (path id, query, JSON body), runs the call with the request's
// context and writes its result as JSON with the shape's status: 200 for a
// read or an update, 201 and Location for a create, 204 for a delete. So a
// handler is its call, and the statuses are here. An error at any step is
// returned as it is: handleError is the one place that maps errors to HTTP.

// respond answers 200 with to(call(ctx)).
func respond[T, Out any](c *fiber.Ctx, call func(context.Context) (T, error), to func(T) Out) error {
	v, err := call(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(to(v))
}

// respondTo answers 200 with to(call(ctx, in)), the input read from the
// request by read (pathID, a query's filter).
func respondTo[In, T, Out any](c *fiber.Ctx, read func(*fiber.Ctx) (In, error),
	call func(context.Context, In) (T, error), to func(T) Out,
) error {
	in, err := read(c)
	if err != nil {
		return err
	}
	return respond(c, func(ctx context.Context) (T, error) { return call(ctx, in) }, to)
}

// create decodes the JSON body, converts it with from, and answers 201 with
// to(call(ctx, new)) and Location: location(result).
func create[In, New, T, Out any](s *Server, c *fiber.Ctx, from func(In) (New, error),
	call func(context.Context, New) (T, error), to func(T) Out, location func(T) string,
) error {
	nv, err := decodeAs(s, c, from)
	if err != nil {
		return err
	}
	v, err := call(c.UserContext(), nv)
	if err != nil {
		return err
	}
	c.Location(location(v))
	return c.Status(fiber.StatusCreated).JSON(to(v))
}

// update reads the path id, decodes the JSON body, converts it with from,
// and answers 200 with to(call(ctx, id, update)).
func update[In, Upd, T, Out any](s *Server, c *fiber.Ctx, from func(In) (Upd, error),
	call func(context.Context, int64, Upd) (T, error), to func(T) Out,
) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	upd, err := decodeAs(s, c, from)
	if err != nil {
		return err
	}
	return respond(c, func(ctx context.Context) (T, error) { return call(ctx, id, upd) }, to)
}

// remove reads the path id and answers 204 once call(ctx, id) succeeds.
func remove(c *fiber.Ctx, call func(context.Context, int64) error) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	if err := call(c.UserContext(), id); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// decodeAs decodes the JSON body as an In and converts it with from.
func decodeAs[In, V any](s *Server, c *fiber.Ctx, from func(In) (V, error)) (V, error) {
	var in In
	if err := s.decodeJSON(c, &in); err != nil {
		var zero V
		return zero, err
	}
	return from(in)
}

// listOf converts every element with to; an empty list is [] in JSON,
// never null.
func listOf[T, Out any](xs []T, to func(T) Out) []Out {
	out := make([]Out, 0, len(xs))
	for _, x := range xs {
		out = append(out, to(x))
	}
	return out
}

// pageCursor is a page's next_cursor: null on the last page.
func pageCursor(nextAfterID int64) *string {
	if nextAfterID <= 0 {
		return nil
	}
	cur := encodeCursor(nextAfterID)
	return &cur
}
