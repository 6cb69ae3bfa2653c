package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/acme/msgsvc/test/bench/procstat"
)

// clockTicks is USER_HZ, the unit of the times in /proc/<pid>/stat.
var clockTicks = procstat.ClockTicks

// readStat, machineTicks: procstat's, shared with the broker-cost tool.
var (
	readStat     = procstat.Read
	machineTicks = procstat.MachineTicks
)

// rssBytes is a process's resident memory (VmRSS); false when it cannot be read.
func rssBytes(pid int) (float64, bool) {
	b, err := procstat.RSSBytes(pid)
	return b, err == nil
}

// cpuTicks is the CPU time (user + system, all threads) a process has used so far.
func cpuTicks(pid int) (uint64, bool) {
	if pid <= 0 {
		return 0, false
	}
	s, err := readStat(pid)
	if err != nil {
		return 0, false
	}
	return s.Utime + s.Stime, true
}

// clusterTicks is the CPU time of a PostgreSQL cluster: the postmaster, its live children (backends, WAL
// writer, checkpointer, autovacuum...) and, through the postmaster's cutime/cstime, the children that have
// already exited and been reaped.
func clusterTicks(postmaster int) (uint64, bool) {
	if postmaster <= 0 {
		return 0, false
	}
	pm, err := readStat(postmaster)
	if err != nil {
		return 0, false
	}
	total := pm.Utime + pm.Stime + pm.Cutime + pm.Cstime
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == postmaster {
			continue
		}
		s, err := readStat(pid)
		if err == nil && s.PPID == postmaster {
			total += s.Utime + s.Stime
		}
	}
	return total, true
}

// postmasterPID reads the first line of the data directory's postmaster.pid (.dev/postgres is a symlink to
// the real directory when services.sh runs as root).
func postmasterPID(root string) int {
	raw, err := os.ReadFile(filepath.Join(root, ".dev", "postgres", "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

var nodeName = regexp.MustCompile(`^msgsvc-[0-9a-f]+@[a-z0-9.-]+$`)

// beamPID finds the Erlang VM of our RabbitMQ node: the pid file services.sh has RabbitMQ write, else
// `pgrep -f` on the node name (msgsvc-<hash>@localhost, recorded in .dev/rabbitmq).
func beamPID(root string) int {
	isBeam := func(pid int) bool {
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		return err == nil && bytes.Contains(cmd, []byte("beam"))
	}
	raw, err := os.ReadFile(filepath.Join(root, ".dev", "rabbitmq", "rabbit.pid"))
	if err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && isBeam(pid) {
			return pid
		}
	}
	// The node name is in the mnesia directory's name: .dev/rabbitmq/mnesia/msgsvc-<hash>@localhost.
	dirs, _ := filepath.Glob(filepath.Join(root, ".dev", "rabbitmq", "mnesia", "msgsvc-*@*"))
	for _, d := range dirs {
		node := filepath.Base(d)
		if !nodeName.MatchString(node) {
			continue
		}
		out, _ := exec.Command("pgrep", "-f", "beam.smp.*"+node).Output()
		for _, s := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(s); err == nil && isBeam(pid) {
				return pid
			}
		}
	}
	return 0
}

// cpuSnap is the CPU time used so far by each part of the pipeline.
type cpuSnap struct {
	at                     time.Time
	service, beam, pg, own uint64
	okService, okBeam, okP bool
	busy, total, steal     uint64
}

func (r *runner) snapCPU(servicePID int) cpuSnap {
	s := cpuSnap{at: time.Now()}
	s.service, s.okService = cpuTicks(servicePID)
	s.beam, s.okBeam = cpuTicks(r.beam)
	s.pg, s.okP = clusterTicks(r.postmaster)
	s.own, _ = cpuTicks(os.Getpid())
	s.busy, s.total, s.steal = machineTicks()
	return s
}

// cpuUse is the CPU each part used between two snapshots, in milliseconds.
type cpuUse struct {
	service, beam, pg, own float64
	okService, okBeam, okP bool
	machineBusy            float64 // fraction of all CPUs busy
	machineSteal           float64 // fraction of all CPUs' time the hypervisor took (in machineBusy too)
	machineMS, machineAll  float64 // busy and total CPU time of all CPUs, in milliseconds
	elapsed                time.Duration
}

func cpuBetween(a, b cpuSnap) cpuUse {
	ms := func(x, y uint64) float64 { return float64(y-x) * 1000 / clockTicks }
	u := cpuUse{
		service: ms(a.service, b.service), beam: ms(a.beam, b.beam), pg: ms(a.pg, b.pg), own: ms(a.own, b.own),
		okService: a.okService && b.okService, okBeam: a.okBeam && b.okBeam, okP: a.okP && b.okP,
		elapsed: b.at.Sub(a.at),
	}
	if b.total > a.total {
		u.machineBusy = float64(b.busy-a.busy) / float64(b.total-a.total)
		u.machineSteal = float64(b.steal-a.steal) / float64(b.total-a.total)
		u.machineMS, u.machineAll = ms(a.busy, b.busy), ms(a.total, b.total)
	}
	return u
}
