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
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (`getconf CLK_TCK`, 100 on Linux).
var clockTicks = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100
}()

// procStat holds the fields of /proc/<pid>/stat the harness needs.
type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime uint64 // clock ticks
}

func readStat(pid int) (procStat, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces; fields after it start at field 3.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	num := func(k int) uint64 { n, _ := strconv.ParseUint(f[k], 10, 64); return n }
	ppid, _ := strconv.Atoi(f[1])
	// f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
	return procStat{ppid: ppid, utime: num(11), stime: num(12), cutime: num(13), cstime: num(14)}, nil
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
	return s.utime + s.stime, true
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
	total := pm.utime + pm.stime + pm.cutime + pm.cstime
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == postmaster {
			continue
		}
		s, err := readStat(pid)
		if err == nil && s.ppid == postmaster {
			total += s.utime + s.stime
		}
	}
	return total, true
}

// machineTicks returns the busy and total jiffies of all CPUs from /proc/stat.
func machineTicks() (busy, total uint64) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i >= 8 { // guest and guest_nice are already counted in user and nice
			break
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// rssBytes is a process's resident memory (VmRSS).
func rssBytes(pid int) (float64, bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb * 1024, true
			}
		}
	}
	return 0, false
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
	busy, total            uint64
}

func (r *runner) snapCPU(servicePID int) cpuSnap {
	s := cpuSnap{at: time.Now()}
	s.service, s.okService = cpuTicks(servicePID)
	s.beam, s.okBeam = cpuTicks(r.beam)
	s.pg, s.okP = clusterTicks(r.postmaster)
	s.own, _ = cpuTicks(os.Getpid())
	s.busy, s.total = machineTicks()
	return s
}

// cpuUse is the CPU each part used between two snapshots, in milliseconds.
type cpuUse struct {
	service, beam, pg, own float64
	okService, okBeam, okP bool
	machineBusy            float64 // fraction of all CPUs busy
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
		u.machineMS, u.machineAll = ms(a.busy, b.busy), ms(a.total, b.total)
	}
	return u
}
