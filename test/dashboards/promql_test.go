package dashboards

import (
	"fmt"
	"strings"
	"testing"
	"unicode"

	"github.com/stretchr/testify/require"
)

// selector is one instant or range vector selector of a query: a metric name and the labels it matches on.
type selector struct {
	Metric string
	Labels []string
}

// usage is what a PromQL expression needs from the series it reads.
type usage struct {
	Selectors []selector
	Grouping  []string // labels of by, without, on, ignoring, group_left and group_right clauses
	Produced  []string // labels that label_replace or label_join create
}

// functions are PromQL's functions and aggregation operators; any other name followed by "(" is an error,
// so a metric name written where a function belongs is not silently skipped.
var functions = map[string]bool{}

func init() {
	for _, f := range strings.Fields(`sum min max avg group stddev stdvar count count_values bottomk topk quantile
		limitk limit_ratio abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
		day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count
		histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters
		double_exponential_smoothing hour idelta increase info irate label_join label_replace ln log2 log10
		minute month predict_linear rate resets round scalar sgn sort sort_desc sort_by_label
		sort_by_label_desc sqrt time timestamp vector year avg_over_time min_over_time max_over_time
		sum_over_time count_over_time quantile_over_time stddev_over_time stdvar_over_time last_over_time
		present_over_time mad_over_time acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg pi rad`) {
		functions[f] = true
	}
}

var (
	aggregations = map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "group": true,
		"stddev": true, "stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true,
		"quantile": true, "limitk": true, "limit_ratio": true}
	groupingKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true}
	otherKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"atan2": true, "inf": true, "nan": true, "start": true, "end": true}
)

type tokenKind int

const (
	tIdent tokenKind = iota
	tString
	tMatchers // {...}, with the label names it matches on
	tLParen
	tRParen
	tComma
	tOther // numbers, durations in [...], operators
)

type token struct {
	kind   tokenKind
	text   string
	labels []string
}

// parsePromQL finds the metric names, matched labels and grouping labels of a PromQL expression. It is a
// lexer with just enough structure for that, not a full parser; Grafana's $variables may appear in strings
// and in range brackets.
func parsePromQL(expr string) (usage, error) {
	toks, err := lex(expr)
	if err != nil {
		return usage{}, err
	}
	var u usage
	for i := 0; i < len(toks); i++ {
		tk := toks[i]
		next := func(k tokenKind) bool { return i+1 < len(toks) && toks[i+1].kind == k }
		switch tk.kind {
		case tMatchers:
			return u, fmt.Errorf("label matchers {%s} without a metric name", strings.Join(tk.labels, ","))
		case tIdent:
		default:
			continue
		}
		name := tk.text
		switch {
		case groupingKeywords[name]:
			if !next(tLParen) {
				continue // group_left without labels
			}
			i += 2
			for ; i < len(toks) && toks[i].kind != tRParen; i++ {
				switch toks[i].kind {
				case tIdent:
					u.Grouping = append(u.Grouping, toks[i].text)
				case tComma:
				default:
					return u, fmt.Errorf("unexpected %q in the label list of %s", toks[i].text, name)
				}
			}
			if i == len(toks) {
				return u, fmt.Errorf("unclosed label list of %s", name)
			}
		case otherKeywords[name]:
		case aggregations[name] && i+1 < len(toks) && (toks[i+1].text == "by" || toks[i+1].text == "without"):
			// sum by (tenant) (...): the clause is read on the next turn
		case next(tLParen):
			if !functions[name] {
				return u, fmt.Errorf("%s( is not a PromQL function or aggregation", name)
			}
			if name == "label_replace" || name == "label_join" {
				dst, err := secondArgString(toks[i+1:])
				if err != nil {
					return u, fmt.Errorf("%s: %w", name, err)
				}
				u.Produced = append(u.Produced, dst)
			}
		default:
			sel := selector{Metric: name}
			if next(tMatchers) {
				i++
				sel.Labels = toks[i].labels
			}
			u.Selectors = append(u.Selectors, sel)
		}
	}
	if len(u.Selectors) == 0 {
		return u, fmt.Errorf("no metric in %q", expr)
	}
	return u, nil
}

// secondArgString returns the string literal that is the second argument of the call whose "(" starts toks.
func secondArgString(toks []token) (string, error) {
	depth, arg := 0, 0
	for _, tk := range toks {
		switch tk.kind {
		case tLParen:
			depth++
		case tRParen:
			depth--
			if depth == 0 {
				return "", fmt.Errorf("fewer than two arguments")
			}
		case tComma:
			if depth == 1 {
				arg++
			}
		case tString:
			if depth == 1 && arg == 1 {
				return tk.text, nil
			}
		}
	}
	return "", fmt.Errorf("unclosed call")
}

func isIdentStart(r byte) bool { return r == '_' || r == ':' || unicode.IsLetter(rune(r)) }
func isIdentPart(r byte) bool  { return isIdentStart(r) || unicode.IsDigit(rune(r)) }

func lex(s string) ([]token, error) {
	var toks []token
	depth := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '"' || c == '\'' || c == '`':
			str, n, err := lexString(s[i:])
			if err != nil {
				return nil, err
			}
			toks = append(toks, token{kind: tString, text: str})
			i += n
		case c == '{':
			end := i + 1
			var labels []string
			for {
				for end < len(s) && (s[end] == ' ' || s[end] == ',') {
					end++
				}
				if end >= len(s) {
					return nil, fmt.Errorf("unclosed { in %q", s)
				}
				if s[end] == '}' {
					end++
					break
				}
				start := end
				for end < len(s) && isIdentPart(s[end]) {
					end++
				}
				if start == end {
					return nil, fmt.Errorf("expected a label name at %q", s[start:])
				}
				labels = append(labels, s[start:end])
				for end < len(s) && s[end] == ' ' {
					end++
				}
				opEnd := end
				for opEnd < len(s) && strings.ContainsRune("=!~", rune(s[opEnd])) {
					opEnd++
				}
				if op := s[end:opEnd]; op != "=" && op != "!=" && op != "=~" && op != "!~" {
					return nil, fmt.Errorf("bad matcher operator %q in %q", op, s)
				}
				end = opEnd
				for end < len(s) && s[end] == ' ' {
					end++
				}
				if end >= len(s) {
					return nil, fmt.Errorf("unclosed { in %q", s)
				}
				_, n, err := lexString(s[end:])
				if err != nil {
					return nil, err
				}
				end += n
			}
			toks = append(toks, token{kind: tMatchers, text: s[i:end], labels: labels})
			i = end
		case c == '[':
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("unclosed [ in %q", s)
			}
			toks = append(toks, token{kind: tOther, text: s[i : i+end+1]})
			i += end + 1
		case c == '(':
			depth++
			toks = append(toks, token{kind: tLParen, text: "("})
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("unbalanced ) in %q", s)
			}
			toks = append(toks, token{kind: tRParen, text: ")"})
			i++
		case c == ',':
			toks = append(toks, token{kind: tComma, text: ","})
			i++
		case isIdentStart(c):
			end := i
			for end < len(s) && isIdentPart(s[end]) {
				end++
			}
			toks = append(toks, token{kind: tIdent, text: s[i:end]})
			i = end
		case c >= '0' && c <= '9' || c == '.':
			end := i
			for end < len(s) && (isIdentPart(s[end]) || s[end] == '.') {
				end++
			}
			toks = append(toks, token{kind: tOther, text: s[i:end]})
			i = end
		case strings.IndexByte("+-*/%^=!<>@", c) >= 0:
			toks = append(toks, token{kind: tOther, text: string(c)})
			i++
		default:
			return nil, fmt.Errorf("unexpected %q at %q", c, s[i:])
		}
	}
	if depth != 0 {
		return nil, fmt.Errorf("unbalanced ( in %q", s)
	}
	return toks, nil
}

// lexString reads the string literal that starts s and returns its (unescaped enough) content and length.
func lexString(s string) (string, int, error) {
	q := s[0]
	if q != '"' && q != '\'' && q != '`' {
		return "", 0, fmt.Errorf("expected a string at %q", s)
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch {
		case s[i] == '\\' && q != '`' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case s[i] == q:
			return b.String(), i + 1, nil
		default:
			b.WriteByte(s[i])
		}
	}
	return "", 0, fmt.Errorf("unclosed string in %q", s)
}

func TestParsePromQL(t *testing.T) {
	u, err := parsePromQL(`sum by (tenant) (label_replace(rabbitmq_detailed_queue_messages_ready{queue=~"tenant\\.($tenant)", queue!~".*\\.dlq"}, "tenant", "$1", "queue", "tenant\\.(.*)"))`)
	require.NoError(t, err)
	require.Equal(t, []selector{{Metric: "rabbitmq_detailed_queue_messages_ready", Labels: []string{"queue", "queue"}}}, u.Selectors)
	require.Equal(t, []string{"tenant"}, u.Grouping)
	require.Equal(t, []string{"tenant"}, u.Produced)

	u, err = parsePromQL(`histogram_quantile(0.99, sum(rate(msgsvc_x_bucket{tenant=~"$tenant"}[$__rate_interval])) by (le)) / ignoring(le) group_left sum(rate(msgsvc_y_total[5m] offset 1h)) > bool 0.5`)
	require.NoError(t, err)
	require.Equal(t, []selector{{Metric: "msgsvc_x_bucket", Labels: []string{"tenant"}}, {Metric: "msgsvc_y_total"}}, u.Selectors)
	require.Equal(t, []string{"le", "le"}, u.Grouping)

	u, err = parsePromQL(`go_goroutines`)
	require.NoError(t, err)
	require.Equal(t, []selector{{Metric: "go_goroutines"}}, u.Selectors)

	for _, bad := range []string{
		`{__name__="x"}`,
		`sum(rate(x[5m])`,
		`msgsvc_typo_total(x)`,
		`x{a="b"`,
		`x{a=="b"}`,
		`sum by (le, 5) (x)`,
		`1 + 2`,
	} {
		_, err := parsePromQL(bad)
		require.Error(t, err, bad)
	}
}
