package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Report is everything one run measured; it is printed as one table and written as JSON.
type Report struct {
	Date    time.Time `json:"date"`
	Machine Machine   `json:"machine"`
	Commit  string    `json:"commit"`
	Options string    `json:"options"`
	// MgmtSampleSeconds is how often the local RabbitMQ node samples its management statistics
	// (services.sh's RMQ_MGMT_SAMPLE_INTERVAL; 0: unknown). Its idle CPU at thousands of queues depends on it.
	MgmtSampleSeconds int         `json:"rabbitmq_mgmt_sample_seconds,omitempty"`
	Scenarios         []*Scenario `json:"scenarios"`
	Missed            int         `json:"targets_missed"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs      int    `json:"cpus"`
	Model     string `json:"model"`
	GoVersion string `json:"go_version"`
	Kernel    string `json:"kernel"`
}

// Scenario is one scenario's parameters, status and results.
type Scenario struct {
	ID      int            `json:"id"`
	Name    string         `json:"name"`
	Params  map[string]any `json:"params"`
	Status  string         `json:"status"` // ok, endpoint missing, error
	Note    string         `json:"note,omitempty"`
	Metrics []*Metric      `json:"metrics"`

	paramOrder []string
	runs       []*Scenario // every run of a repeated scenario, in order (medianRun)
}

// Metric is one measured value, with its target when it has one.
type Metric struct {
	Name   string   `json:"name"`
	Value  *float64 `json:"value"` // nil when not measured
	Unit   string   `json:"unit,omitempty"`
	Text   string   `json:"text"`
	Target string   `json:"target,omitempty"`
	Pass   *bool    `json:"pass,omitempty"`

	key string // for lookups between scenarios
}

func newScenario(id int, name string) *Scenario {
	return &Scenario{ID: id, Name: name, Params: map[string]any{}, Status: "ok"}
}

func (s *Scenario) param(name string, v any) {
	if _, ok := s.Params[name]; !ok {
		s.paramOrder = append(s.paramOrder, name)
	}
	s.Params[name] = v
}

// add records a value; text is how it is printed.
func (s *Scenario) add(key, name string, v float64, unit, text string) *Metric {
	m := &Metric{key: key, Name: name, Value: &v, Unit: unit, Text: text}
	s.Metrics = append(s.Metrics, m)
	return m
}

// na records a value that could not be measured.
func (s *Scenario) na(key, name, why string) *Metric {
	m := &Metric{key: key, Name: name, Text: why}
	s.Metrics = append(s.Metrics, m)
	return m
}

func (s *Scenario) metric(key string) *Metric {
	for _, m := range s.Metrics {
		if m.key == key {
			return m
		}
	}
	return nil
}

// atMost and atLeast attach a target; a value that was not measured misses it.
func (m *Metric) atMost(limit float64, text string) *Metric {
	m.Target = "≤ " + text
	pass := m.Value != nil && *m.Value <= limit
	m.Pass = &pass
	return m
}

// zero attaches the target "= 0".
func (m *Metric) zero() *Metric {
	m.atMost(0, "0")
	m.Target = "= 0"
	return m
}

func (m *Metric) atLeast(limit float64, text string) *Metric {
	m.Target = "≥ " + text
	pass := m.Value != nil && *m.Value >= limit
	m.Pass = &pass
	return m
}

// ---------------------------------------------------------------- formats --

func fmtInt(v float64) string {
	n := int64(math.Round(v))
	neg := n < 0
	if neg {
		n = -n
	}
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtRate(v float64) string { return fmtInt(v) + " /s" }

func fmtMS(d time.Duration) string { return fmtMSf(float64(d) / float64(time.Millisecond)) }

func fmtMSf(ms float64) string {
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%s ms", fmtInt(ms))
	}
}

func fmtSeconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func fmtMB(b float64) string { return fmt.Sprintf("%.0f MB", b/(1<<20)) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func sortDurations(d []time.Duration) { sort.Slice(d, func(i, j int) bool { return d[i] < d[j] }) }

// ------------------------------------------------------------------ table --

func width(s string) int { return utf8.RuneCountInString(s) }

func pad(s string, w int) string { return s + strings.Repeat(" ", max(0, w-width(s))) }

func padLeft(s string, w int) string { return strings.Repeat(" ", max(0, w-width(s))) + s }

// Table renders the report as one text table.
func (r *Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "msgsvc benchmark  %s  ·  %d CPUs (%s)  ·  %s  ·  commit %s",
		r.Date.UTC().Format("2006-01-02 15:04 MST"), r.Machine.CPUs, r.Machine.Model, r.Machine.GoVersion, r.Commit)
	if r.MgmtSampleSeconds > 0 {
		fmt.Fprintf(&b, "  ·  RabbitMQ management sampled every %d s", r.MgmtSampleSeconds)
	}
	b.WriteString("\n")
	wn, wv, wt := len("metric"), len("value"), len("target")
	for _, s := range r.Scenarios {
		for _, m := range s.Metrics {
			wn, wv, wt = max(wn, width(m.Name)), max(wv, width(m.Text)), max(wt, width(m.Target))
		}
	}
	line := strings.Repeat("─", 5+wn+2+wv+2+wt+3)
	fmt.Fprintf(&b, "%s\n     %s  %s  %s\n%s\n", line, pad("metric", wn), padLeft("value", wv), pad("target", wt), line)
	for i, s := range r.Scenarios {
		if i > 0 {
			b.WriteString("\n")
		}
		status := ""
		if s.Status != "ok" {
			status = "  [" + s.Status + "]"
		}
		fmt.Fprintf(&b, "%d  %s%s\n", s.ID, s.Name, status)
		if len(s.paramOrder) > 0 {
			ps := make([]string, 0, len(s.paramOrder))
			for _, k := range s.paramOrder {
				ps = append(ps, fmt.Sprintf("%s %v", k, s.Params[k]))
			}
			fmt.Fprintf(&b, "   %s\n", strings.Join(ps, " · "))
		}
		for _, m := range s.Metrics {
			mark := ""
			if m.Pass != nil {
				mark = "✗"
				if *m.Pass {
					mark = "✓"
				}
			}
			fmt.Fprintf(&b, "     %s  %s  %s %s\n", pad(m.Name, wn), padLeft(m.Text, wv), pad(m.Target, wt), mark)
		}
		if s.Note != "" {
			for _, l := range strings.Split(s.Note, "\n") {
				fmt.Fprintf(&b, "   note: %s\n", l)
			}
		}
	}
	b.WriteString(line + "\n")
	fmt.Fprintf(&b, "targets missed: %d\n", r.Missed)
	return b.String()
}

func (r *Report) countMissed() {
	r.Missed = 0
	for _, s := range r.Scenarios {
		for _, m := range s.Metrics {
			if m.Pass != nil && !*m.Pass {
				r.Missed++
			}
		}
	}
}

func (r *Report) writeJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}
