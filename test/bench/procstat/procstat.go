// Package procstat reads what the benchmarks measure of processes and of the machine from /proc: CPU time, the
// parent of a process, resident memory. It serves the bench and the broker-cost tool alike.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (`getconf CLK_TCK`, 100 on Linux).
var ClockTicks = func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			return float64(n)
		}
	}
	return 100
}()

// Stat holds the fields of /proc/<pid>/stat the benchmarks need; the times are in clock ticks, all threads.
type Stat struct {
	PPID                         int
	Utime, Stime, Cutime, Cstime uint64
}

// Read reads /proc/<pid>/stat.
func Read(pid int) (Stat, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces; fields after it start at field 3.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 15 {
		return Stat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	num := func(k int) uint64 { n, _ := strconv.ParseUint(f[k], 10, 64); return n }
	ppid, _ := strconv.Atoi(f[1])
	// f[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
	return Stat{PPID: ppid, Utime: num(11), Stime: num(12), Cutime: num(13), Cstime: num(14)}, nil
}

// MachineTicks returns the busy and total clock ticks of all CPUs so far, from /proc/stat, and of the busy ones
// those the hypervisor took (steal: this machine's processes were ready to run on a CPU that ran someone else's).
func MachineTicks() (busy, total, steal uint64) {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	for i, v := range strings.Fields(line)[1:] {
		if i >= 8 { // guest and guest_nice are already counted in user and nice
			break
		}
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
		if i == 7 {
			steal = n
		}
	}
	return busy, total, steal
}

// RSSBytes is a process's resident memory (VmRSS).
func RSSBytes(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb * 1024, nil
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
