package messaging

import "encoding/json"

// A JSON scanner for the hot path: one pass over the bytes with tight loops, where encoding/json's state
// machine makes two or three (its decoder reads a value, then unmarshals it, then skips a json.RawMessage again).
// It accepts exactly the grammar of RFC 8259, as json.Valid does (it does not check UTF-8 either); nesting
// deeper than maxScanDepth is left to encoding/json.

// maxScanDepth is the deepest nesting the scanner follows; deeper values are left to encoding/json, whose
// limit (10,000) decides.
const maxScanDepth = 512

// validJSON reports whether raw is one valid JSON value, with optional whitespace around it, like json.Valid.
func validJSON(raw []byte) bool {
	i := skipWS(raw, 0)
	end, ok, sure := scanValue(raw, i, 0)
	if !sure {
		return json.Valid(raw)
	}
	return ok && skipWS(raw, end) == len(raw)
}

// isWS reports whether c is JSON whitespace.
func isWS(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

// skipWS returns the index of the first byte at or after i that is not JSON whitespace.
func skipWS(b []byte, i int) int {
	for i < len(b) && isWS(b[i]) {
		i++
	}
	return i
}

// scanValue scans the JSON value that starts at b[i] and returns the index after it. ok is false when it is not
// valid JSON; sure is false when the scanner gave up (nesting deeper than maxScanDepth).
func scanValue(b []byte, i, depth int) (end int, ok, sure bool) {
	if i >= len(b) {
		return 0, false, true
	}
	switch c := b[i]; {
	case c == '{' || c == '[':
		if depth >= maxScanDepth {
			return 0, false, false
		}
		return scanContainer(b, i, depth)
	case c == '"':
		end, ok = scanJSONString(b, i)
		return end, ok, true
	case c == '-' || (c >= '0' && c <= '9'):
		end, ok = scanNumber(b, i)
		return end, ok, true
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	}
	return 0, false, true
}

func scanLiteral(b []byte, i int, lit string) (int, bool, bool) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, false, true
	}
	return i + len(lit), true, true
}

// scanContainer scans the object or array that starts at b[i].
func scanContainer(b []byte, i, depth int) (int, bool, bool) {
	object := b[i] == '{'
	closing := byte(']')
	if object {
		closing = '}'
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == closing {
		return i + 1, true, true
	}
	for {
		if object {
			if i >= len(b) || b[i] != '"' {
				return 0, false, true
			}
			end, ok := scanJSONString(b, i)
			if !ok {
				return 0, false, true
			}
			i = skipWS(b, end)
			if i >= len(b) || b[i] != ':' {
				return 0, false, true
			}
			i = skipWS(b, i+1)
		}
		end, ok, sure := scanValue(b, i, depth+1)
		if !ok || !sure {
			return 0, ok, sure
		}
		i = skipWS(b, end)
		if i >= len(b) {
			return 0, false, true
		}
		switch b[i] {
		case closing:
			return i + 1, true, true
		case ',':
			i = skipWS(b, i+1)
		default:
			return 0, false, true
		}
	}
}

// scanJSONString scans the string whose opening quote is b[i] and returns the index after its closing quote:
// no control characters, and only JSON's escapes.
func scanJSONString(b []byte, i int) (int, bool) {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return 0, false
		case c == '\\':
			if i+1 >= len(b) {
				return 0, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if _, ok := hex4(b, i+2); !ok {
					return 0, false
				}
				i += 5
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

// scanNumber scans the number that starts at b[i]: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i+1)
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}

// parsePublish fills req from body when body is a plain publish request: an object with the keys tenant_id (a
// string without escapes) and payload (an object or array), each at most once, spelled exactly so, and nothing
// else. It answers false for anything else (other or repeated keys, other types, escapes in tenant_id, invalid
// JSON, trailing data), and the strict decoder then decides and words the error: so what it fills is exactly
// what the strict decoder would. The payload is a slice of body (the body is the request's own buffer).
func parsePublish(body []byte, req *PublishRequest) bool {
	i := skipWS(body, 0)
	if i >= len(body) || body[i] != '{' {
		return false
	}
	var tenant *string
	var payload json.RawMessage
	i = skipWS(body, i+1)
	for {
		if i >= len(body) || body[i] != '"' {
			return false
		}
		j := i + 1
		for j < len(body) && body[j] != '"' && body[j] != '\\' {
			j++
		}
		if j >= len(body) || body[j] != '"' {
			return false
		}
		key := body[i+1 : j]
		i = skipWS(body, j+1)
		if i >= len(body) || body[i] != ':' {
			return false
		}
		i = skipWS(body, i+1)
		switch string(key) {
		case "tenant_id":
			if tenant != nil || i >= len(body) || body[i] != '"' {
				return false
			}
			j := i + 1
			for j < len(body) && body[j] != '"' && body[j] != '\\' && body[j] >= 0x20 {
				j++
			}
			if j >= len(body) || body[j] != '"' {
				return false
			}
			s := string(body[i+1 : j])
			tenant, i = &s, j+1
		case "payload":
			if payload != nil || i >= len(body) || (body[i] != '{' && body[i] != '[') {
				return false
			}
			end, ok, sure := scanValue(body, i, 0)
			if !ok || !sure {
				return false
			}
			payload, i = body[i:end:end], end
		default:
			return false
		}
		i = skipWS(body, i)
		if i >= len(body) {
			return false
		}
		if body[i] == '}' {
			break
		}
		if body[i] != ',' {
			return false
		}
		i = skipWS(body, i+1)
	}
	if skipWS(body, i+1) != len(body) {
		return false
	}
	req.TenantID, req.Payload = tenant, payload
	return true
}
