package httpserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/acme/msgsvc/platform/problem"
)

// DecodeJSON strictly decodes the request body into dst: the media type must be JSON, unknown fields and
// trailing data are rejected, and every failure is a problem error naming the field where one is known.
func DecodeJSON(r *http.Request, dst any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return problem.New(problem.KindUnsupported, "unsupported-media-type", "the request body must be application/json")
		}
	} else {
		return problem.New(problem.KindUnsupported, "unsupported-media-type", "the Content-Type header must be application/json")
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return decodeError(err)
		}
		return problem.New(problem.KindInvalid, "malformed-json", "the request body must hold a single JSON value")
	}
	return nil
}

func decodeError(err error) error {
	var (
		syntaxErr *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
		mbe       *http.MaxBytesError
	)
	switch {
	case errors.As(err, &mbe):
		return problem.New(problem.KindTooLarge, "body-too-large", fmt.Sprintf("the request body exceeds %d bytes", mbe.Limit))
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

// WriteJSON answers v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
