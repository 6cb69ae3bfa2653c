package messaging

// PostgreSQL's jsonb refuses some JSON that encoding/json accepts: numbers that do not fit its numeric type and
// \u escapes of lone UTF-16 surrogates (and \u0000). A payload with one of them could be accepted and then never
// stored, so publishing refuses it.

// Limits of PostgreSQL's numeric type: decimal digits before the decimal point, and after it.
const (
	numericMaxIntegerDigits  = 131072
	numericMaxFractionDigits = 16383
)

// jsonbCompatible reports whether jsonb accepts raw, which must be valid JSON.
func jsonbCompatible(raw []byte) bool {
	for i := 0; i < len(raw); {
		switch c := raw[i]; {
		case c == '"':
			end, ok := scanString(raw, i+1)
			if !ok {
				return false
			}
			i = end
		case c == '-' || (c >= '0' && c <= '9'):
			end := i + 1
			for end < len(raw) && isNumberByte(raw[end]) {
				end++
			}
			if !numericFits(raw[i:end]) {
				return false
			}
			i = end
		default:
			i++
		}
	}
	return true
}

func isNumberByte(c byte) bool {
	return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}

// scanString checks the escapes of the string that starts at raw[i] (after its opening quote) and returns the
// index after its closing quote.
func scanString(raw []byte, i int) (int, bool) {
	for i < len(raw) {
		switch raw[i] {
		case '"':
			return i + 1, true
		case '\\':
			if i+1 < len(raw) && raw[i+1] == 'u' {
				r, ok := hex4(raw, i+2)
				switch {
				case !ok || r == 0:
					return 0, false
				case r >= 0xD800 && r <= 0xDBFF: // a high surrogate must be followed by a low one
					if i+11 >= len(raw) || raw[i+6] != '\\' || raw[i+7] != 'u' {
						return 0, false
					}
					if lo, ok := hex4(raw, i+8); !ok || lo < 0xDC00 || lo > 0xDFFF {
						return 0, false
					}
					i += 12
					continue
				case r >= 0xDC00 && r <= 0xDFFF: // a low surrogate alone
					return 0, false
				}
				i += 6
				continue
			}
			i += 2
		default:
			i++
		}
	}
	return 0, false
}

func hex4(raw []byte, i int) (rune, bool) {
	if i+4 > len(raw) {
		return 0, false
	}
	var r rune
	for _, c := range raw[i : i+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

// numericFits reports whether the JSON number lit fits PostgreSQL's numeric: at most numericMaxIntegerDigits
// digits before the decimal point and numericMaxFractionDigits after it (counting the fraction's digits as
// written, trailing zeros included, as PostgreSQL does).
func numericFits(lit []byte) bool {
	if len(lit) > 0 && lit[0] == '-' {
		lit = lit[1:]
	}
	i := 0
	for i < len(lit) && lit[i] >= '0' && lit[i] <= '9' {
		i++
	}
	intPart := lit[:i]
	var frac []byte
	if i < len(lit) && lit[i] == '.' {
		j := i + 1
		for j < len(lit) && lit[j] >= '0' && lit[j] <= '9' {
			j++
		}
		frac, i = lit[i+1:j], j
	}
	exp := 0
	if i < len(lit) && (lit[i] == 'e' || lit[i] == 'E') {
		i++
		neg := false
		if i < len(lit) && (lit[i] == '+' || lit[i] == '-') {
			neg = lit[i] == '-'
			i++
		}
		for ; i < len(lit); i++ {
			exp = exp*10 + int(lit[i]-'0')
			if exp > 1_000_000_000 { // far beyond both limits (and PostgreSQL refuses such exponents outright)
				return false
			}
		}
		if neg {
			exp = -exp
		}
	}
	if len(frac)-exp > numericMaxFractionDigits {
		return false
	}
	// The decimal exponent of the leading non-zero digit: the value is d.ddd × 10^lead.
	for k, c := range intPart {
		if c != '0' {
			return len(intPart)-1-k+exp < numericMaxIntegerDigits
		}
	}
	for k, c := range frac {
		if c != '0' {
			return -(k+1)+exp < numericMaxIntegerDigits
		}
	}
	return true // zero
}
