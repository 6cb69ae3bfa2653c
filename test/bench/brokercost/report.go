package main

import (
	"fmt"
	"strings"
	"time"
)

// report is every run of one invocation.
type report struct {
	Date    time.Time `json:"date"`
	Commit  string    `json:"commit"`
	Options string    `json:"options"`
	Version string    `json:"rabbitmq_version"`
	Runs    []run     `json:"runs"`
}

// markdown renders the runs as the table test/bench/README.md shows.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "brokercost %s UTC, commit %s, options %q\n\n", r.Date.Format("2006-01-02 15:04"), r.Commit, r.Options)
	b.WriteString("| RabbitMQ | queue type | tenant queues | RSS | RSS per 1,000 over empty | RabbitMQ's mem_used | idle CPU (% of a core) | idle CPU per 1,000 | declare (this step) | consume (this step) | Erlang processes | other processes' CPU |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, run := range r.Runs {
		e := run.Empty
		fmt.Fprintf(&b, "| %s | %s | 0 | %s | | %s | %.1f %% | | | | %d | %.0f %% |\n",
			run.Version, run.Type, mb(e.RSSBytes), mb(e.MemUsedBytes), e.IdleCPU, e.Procs, e.OtherCPU)
		prev := 0
		for _, s := range run.Steps {
			added := s.Queues - prev
			rate := func(sec float64) string {
				if sec <= 0 || added <= 0 {
					return "–"
				}
				return fmt.Sprintf("%.1f s (%.0f/s)", sec, float64(added)/sec)
			}
			per := func(v, base float64) float64 { return (v - base) / float64(max(s.Queues, 1)) * 1000 }
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %.0f MB | %s | %.1f %% | %.2f %% | %s | %s | %d | %.0f %% |\n",
				run.Version, run.Type, s.Queues, mb(s.RSSBytes), per(s.RSSBytes, e.RSSBytes)/(1<<20), mb(s.MemUsedBytes),
				s.IdleCPU, per(s.IdleCPU, e.IdleCPU), rate(s.DeclareSeconds), rate(s.ConsumeSeconds), s.Procs, s.OtherCPU)
			prev = s.Queues
		}
		fmt.Fprintf(&b, "| %s | %s | deleted | | | | | | %.1f s to close and delete all | | | |\n", run.Version, run.Type, run.DeleteSeconds)
		if run.Note != "" {
			fmt.Fprintf(&b, "\n%s %s: %s\n\n", run.Version, run.Type, run.Note)
		}
	}
	return b.String()
}
