package main

import "github.com/acme/msgsvc/test/bench/procstat"

// cpuMS is the CPU time (user + system) a process has used so far, in milliseconds.
func cpuMS(pid int) (float64, error) {
	s, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return float64(s.Utime+s.Stime) * 1000 / procstat.ClockTicks, nil
}

// machineMS returns the busy and total CPU time of all CPUs so far (/proc/stat), in milliseconds.
func machineMS() (busy, total float64) {
	b, t, _ := procstat.MachineTicks()
	return float64(b) * 1000 / procstat.ClockTicks, float64(t) * 1000 / procstat.ClockTicks
}

// rssBytes is a process's resident memory (VmRSS).
func rssBytes(pid int) (float64, error) { return procstat.RSSBytes(pid) }

// readStat reads /proc/<pid>/stat.
var readStat = procstat.Read
