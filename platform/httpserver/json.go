package httpserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// DecodeJSON strictly decodes the request body into dst: the media type must be JSON, the body must fit the
// server's HTTP_MAX_BODY_BYTES, unknown fields and trailing data are rejected, and every failure is a problem
// error naming the field where one is known.
func DecodeJSON(r *http.Request, dst any) error {
	body, err := ReadJSON(r)
	if err != nil {
		return err
	}
	return DecodeJSONBody(body, dst)
}

// DecodeJSONLimit is DecodeJSON with its own body limit, for endpoints that take larger bodies.
func DecodeJSONLimit(r *http.Request, dst any, limit int64) error {
	body, err := ReadJSONLimit(r, limit)
	if err != nil {
		return err
	}
	return DecodeJSONBody(body, dst)
}

// ReadJSON reads the request body for DecodeJSONBody, with DecodeJSON's checks of the media type, the size
// (HTTP_MAX_BODY_BYTES) and UTF-8: a handler with a faster decoder for its usual bodies reads the body once and
// leaves the others, and the wording of every error, to DecodeJSONBody.
func ReadJSON(r *http.Request) ([]byte, error) {
	limit := int64(1 << 20)
	if b, ok := r.Body.(*limitedBody); ok {
		limit = b.limit
	}
	return ReadJSONLimit(r, limit)
}

// ReadJSONLimit is ReadJSON with its own body limit.
func ReadJSONLimit(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, tooLarge(limit)
	}
	if r.ContentLength <= 0 { // net/http gives no more than a Content-Length, which fits the limit
		r.Body = http.MaxBytesReader(nil, r.Body, limit)
	}
	if ct := r.Header.Get("Content-Type"); ct == "" {
		return nil, problem.New(problem.KindUnsupported, "unsupported-media-type", "the Content-Type header must be application/json")
	} else if !isJSON(ct) {
		return nil, problem.New(problem.KindUnsupported, "unsupported-media-type", "the request body must be application/json")
	}
	// encoding/json would replace invalid UTF-8 with U+FFFD, silently changing what the client sent; JSON
	// between systems must be UTF-8 (RFC 8259), so such a body is refused instead.
	body, err := readBody(r)
	if err != nil {
		return nil, decodeError(err)
	}
	if !utf8.Valid(body) {
		return nil, problem.New(problem.KindInvalid, "malformed-json", "the request body is not valid UTF-8")
	}
	return body, nil
}

// DecodeJSONBody strictly decodes a body that ReadJSON read into dst, as DecodeJSON does.
func DecodeJSONBody(body []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err)
	}
	if len(bytes.TrimLeft(body[dec.InputOffset():], " \t\r\n")) != 0 {
		return problem.New(problem.KindInvalid, "malformed-json", "the request body must hold a single JSON value")
	}
	return nil
}

// isJSON reports whether a Content-Type is JSON: application/json or a +json type, with any parameters.
func isJSON(ct string) bool {
	if ct == "application/json" || ct == "application/json; charset=utf-8" {
		return true // the common cases, without parsing
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// readBody reads the whole body: into a buffer of its announced length when there is one (one allocation;
// net/http never gives more than Content-Length).
func readBody(r *http.Request) ([]byte, error) {
	if r.ContentLength <= 0 {
		return io.ReadAll(r.Body)
	}
	body := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, body); err != nil {
		return nil, err
	}
	return body, nil
}

func decodeError(err error) error {
	var (
		syntaxErr *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
		mbe       *http.MaxBytesError
	)
	switch {
	case errors.As(err, &mbe):
		return tooLarge(mbe.Limit)
	case errors.As(err, &syntaxErr):
		return problem.New(problem.KindInvalid, "malformed-json", fmt.Sprintf("malformed JSON at byte %d", syntaxErr.Offset))
	case errors.Is(err, io.EOF):
		return problem.New(problem.KindInvalid, "malformed-json", "the request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return problem.New(problem.KindInvalid, "malformed-json", "the request body is truncated JSON")
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			return problem.New(problem.KindInvalid, "malformed-json", "the request body must be a JSON object")
		}
		return problem.Invalid(field, fmt.Sprintf("must be a %s, not %s", jsonKind(typeErr.Type.Kind().String()), typeErr.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return problem.Invalid(field, "is not a known field")
	default:
		return problem.New(problem.KindInvalid, "malformed-json", "the request body is not valid JSON")
	}
}

func jsonKind(goKind string) string {
	switch {
	case strings.HasPrefix(goKind, "int"), strings.HasPrefix(goKind, "uint"), strings.HasPrefix(goKind, "float"):
		return "number"
	case goKind == "string":
		return "string"
	case goKind == "bool":
		return "boolean"
	case goKind == "slice", goKind == "array":
		return "array"
	default:
		return "object"
	}
}

// jsonContentType is the Content-Type header's value of every JSON answer, shared (net/http only reads it).
var jsonContentType = []string{"application/json"}

// WriteJSON answers v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteJSONBytes answers body, which is JSON already (ending with a newline, as WriteJSON's), with status.
func WriteJSONBytes(w http.ResponseWriter, status int, body []byte) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// ParseUUID parses a UUID in its canonical 36-character form from a path or query parameter named field.
func ParseUUID(field, s string) (uuid.UUID, error) {
	id, err := uuid.Parse(s)
	if err != nil || len(s) != 36 {
		return uuid.Nil, problem.Invalid(field, "must be a UUID such as 0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b")
	}
	return id, nil
}

// PageParams reads the limit and cursor query parameters of a paginated list.
func PageParams(r *http.Request) (int, *pagination.Cursor, error) {
	q := r.URL.Query()
	limit, ok := pagination.ParseLimit(q.Get("limit"))
	if !ok {
		return 0, nil, problem.Invalid("limit", fmt.Sprintf("must be an integer between 1 and %d", pagination.MaxLimit))
	}
	if !q.Has("cursor") {
		return limit, nil, nil
	}
	c, err := pagination.Decode(q.Get("cursor"))
	if err != nil {
		return 0, nil, problem.Invalid("cursor", "must be a next_cursor from a previous page or an RFC 3339 time")
	}
	return limit, &c, nil
}
