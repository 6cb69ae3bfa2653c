package config

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// tableRow is one row of the configuration table in README.md: the variable and its default cell as written.
type tableRow struct {
	Variable string
	Default  string
}

// readerMethods are the reader methods LoadFrom reads a variable with; the value is whether the method takes
// a default as its second argument.
var readerMethods = map[string]bool{
	"str": true, "int": true, "float": true, "dur": true, "durOrZero": true, "bool": true, "oneOf": true, "url": true,
	"list": false, "urlList": false, "optionalURL": false,
}

// declaration is how LoadFrom reads one variable: the reader method and its default expression (nil when
// the method takes none).
type declaration struct {
	Method  string
	Default ast.Expr
}

// TestConfigTableMatchesConfig checks platform/config/README.md against LoadFrom: every variable LoadFrom
// reads has a row, every row names a variable it reads, and every default written in the table is the one
// LoadFrom applies.
func TestConfigTableMatchesConfig(t *testing.T) {
	rows := readmeRows(t)
	require.Greater(t, len(rows), 30, "README.md's configuration table looks truncated")
	require.Empty(t, configTableProblems(t, rows), "platform/config/README.md and config.go differ")
}

// TestConfigTableCheckCatchesDrift feeds the check tables that are wrong in each way it must notice.
func TestConfigTableCheckCatchesDrift(t *testing.T) {
	rows := readmeRows(t)
	edit := func(f func([]tableRow) []tableRow) []tableRow { return f(slices.Clone(rows)) }
	setDefault := func(v, d string) []tableRow {
		return edit(func(r []tableRow) []tableRow {
			i := slices.IndexFunc(r, func(x tableRow) bool { return x.Variable == v })
			require.GreaterOrEqual(t, i, 0, "no row for %s", v)
			r[i].Default = d
			return r
		})
	}
	cases := map[string]struct {
		rows []tableRow
		want string
	}{
		"missing row": {edit(func(r []tableRow) []tableRow {
			return slices.DeleteFunc(r, func(x tableRow) bool { return x.Variable == "HTTP_ADDR" })
		}), "HTTP_ADDR"},
		"stale row":             {append(slices.Clone(rows), tableRow{"NO_SUCH_SETTING", "`1`"}), "NO_SUCH_SETTING"},
		"duplicate row":         {append(slices.Clone(rows), tableRow{"LOG_LEVEL", "`info`"}), "LOG_LEVEL"},
		"wrong duration":        {setDefault("RECONCILE_INTERVAL", "`31s`"), "RECONCILE_INTERVAL"},
		"wrong number":          {setDefault("HTTP_MAX_BODY_BYTES", "`262145`"), "HTTP_MAX_BODY_BYTES"},
		"wrong choice":          {setDefault("AMQP_QUEUE_TYPE", "`classic`"), "AMQP_QUEUE_TYPE"},
		"wrong bool":            {setDefault("METRICS_PER_TENANT", "`false`"), "METRICS_PER_TENANT"},
		"invalid value":         {setDefault("CONSUMER_LINGER", "`soon`"), "CONSUMER_LINGER"},
		"default of no default": {setDefault("AMQP_URLS", "`amqp://127.0.0.1:27672/`"), "AMQP_URLS"},
		"empty but has one":     {setDefault("LOG_FORMAT", "(empty)"), "LOG_FORMAT"},
		"required but is not":   {setDefault("PPROF_ADDR", "(required)"), "PPROF_ADDR"},
		"words for a constant":  {setDefault("HTTP_ADDR", "port 8080 on every interface"), "HTTP_ADDR"},
		"constant for computed": {setDefault("REPLICA_ID", "`r1`"), "REPLICA_ID"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			problems := configTableProblems(t, c.rows)
			require.NotEmpty(t, problems)
			require.True(t, slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, c.want) }),
				"no problem names %s: %q", c.want, problems)
		})
	}
}

// readmeRows reads the configuration table of README.md next to this file.
func readmeRows(t *testing.T) []tableRow {
	t.Helper()
	raw, err := os.ReadFile("README.md")
	require.NoError(t, err)
	rows, err := parseConfigTable(string(raw))
	require.NoError(t, err)
	return rows
}

// parseConfigTable reads the markdown table whose header is "| variable | default | meaning |".
func parseConfigTable(text string) ([]tableRow, error) {
	lines := strings.Split(text, "\n")
	start := slices.IndexFunc(lines, func(l string) bool {
		return strings.HasPrefix(strings.ReplaceAll(l, " ", ""), "|variable|default|meaning|")
	})
	if start < 0 || start+1 >= len(lines) || !strings.HasPrefix(lines[start+1], "|---") {
		return nil, fmt.Errorf("no table with the header | variable | default | meaning |")
	}
	var rows []tableRow
	for _, l := range lines[start+2:] {
		if !strings.HasPrefix(l, "|") {
			break
		}
		cells := strings.SplitN(l, "|", 4)
		if len(cells) < 4 {
			return nil, fmt.Errorf("row %q has fewer than three cells", l)
		}
		v := strings.TrimSpace(cells[1])
		if len(v) < 3 || v[0] != '`' || v[len(v)-1] != '`' {
			return nil, fmt.Errorf("row %q: the variable is not written as `NAME`", l)
		}
		rows = append(rows, tableRow{Variable: v[1 : len(v)-1], Default: strings.TrimSpace(cells[2])})
	}
	return rows, nil
}

// readVariables answers the names LoadFrom asks the environment for.
func readVariables() map[string]bool {
	read := map[string]bool{}
	_, _ = LoadFrom(func(name string) string { read[name] = true; return "" })
	return read
}

// declarations finds, in LoadFrom's source, the reader call of each variable (r.dur("NAME", default), ...).
func declarations(t *testing.T) map[string]declaration {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "config.go", nil, 0)
	require.NoError(t, err)
	decls := map[string]declaration{}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "LoadFrom" {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			recv, ok := sel.X.(*ast.Ident)
			takesDefault, known := readerMethods[sel.Sel.Name]
			lit, isLit := call.Args[0].(*ast.BasicLit)
			if !ok || recv.Name != "r" || !known || !isLit || lit.Kind != token.STRING {
				return true
			}
			name, err := strconv.Unquote(lit.Value)
			require.NoError(t, err)
			d := declaration{Method: sel.Sel.Name}
			if takesDefault {
				require.GreaterOrEqual(t, len(call.Args), 2, "r.%s(%q) has no default", d.Method, name)
				d.Default = call.Args[1]
			}
			decls[name] = d
			return true
		})
	}
	require.NotEmpty(t, decls, "found no reader calls in LoadFrom")
	return decls
}

// configTableProblems lists every way rows disagree with LoadFrom. A default cell is either a value in
// backticks (LoadFrom given that value must produce exactly its default configuration), "(empty)" (the
// variable has no default), "(required)" (no default, and LoadFrom fails without it), or words describing a
// default computed at start (such as the host name).
func configTableProblems(t *testing.T, rows []tableRow) []string {
	t.Helper()
	read, decls := readVariables(), declarations(t)
	defaults, err := LoadFrom(env(nil))
	require.NoError(t, err)

	var problems []string
	add := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }
	listed := map[string]bool{}
	for _, r := range rows {
		if listed[r.Variable] {
			add("%s: listed twice", r.Variable)
			continue
		}
		listed[r.Variable] = true
		if !read[r.Variable] {
			add("%s: listed, but config.go does not read it", r.Variable)
			continue
		}
		d, ok := decls[r.Variable]
		if !ok {
			add("%s: read, but not through a reader call this test understands (r.str, r.dur, ...)", r.Variable)
			continue
		}
		switch def := r.Default; {
		case len(def) >= 2 && def[0] == '`' && def[len(def)-1] == '`':
			v := def[1 : len(def)-1]
			c, err := LoadFrom(env(map[string]string{r.Variable: v}))
			if err != nil {
				add("%s: default %s is not a value config.go accepts: %v", r.Variable, def, err)
			} else if !reflect.DeepEqual(c, defaults) {
				add("%s: default %s is not config.go's default (%s)", r.Variable, def, exprText(d.Default))
			}
		case def == "(empty)" || def == "(required)":
			if d.Default != nil && exprText(d.Default) != `""` {
				add("%s: written %s, but config.go's default is %s", r.Variable, def, exprText(d.Default))
			}
			if def == "(required)" {
				_, err := LoadFrom(func(name string) string {
					if name == r.Variable {
						return ""
					}
					return env(nil)(name)
				})
				if err == nil || !strings.Contains(err.Error(), r.Variable) {
					add("%s: written (required), but config.go loads without it", r.Variable)
				}
			}
		default:
			if _, computed := d.Default.(*ast.CallExpr); !computed {
				add("%s: default written in words (%q), but config.go's is %s: write it in backticks",
					r.Variable, def, exprText(d.Default))
			}
		}
	}
	for v := range read {
		if !listed[v] {
			add("%s: read by config.go, but not listed", v)
		}
	}
	slices.Sort(problems)
	return problems
}

// exprText renders a default expression of config.go for a problem message.
func exprText(e ast.Expr) string {
	switch e := e.(type) {
	case nil:
		return "none"
	case *ast.BasicLit:
		return e.Value
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return exprText(e.X) + "." + e.Sel.Name
	case *ast.BinaryExpr:
		return exprText(e.X) + e.Op.String() + exprText(e.Y)
	case *ast.CallExpr:
		return exprText(e.Fun) + "(…)"
	default:
		return fmt.Sprintf("%T", e)
	}
}
