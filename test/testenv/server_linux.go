package testenv

import "syscall"

// serverProcAttr puts the service in its own process group and has the kernel send it SIGTERM when the
// thread that started it ends (the harness or test binary died without stopping it).
func serverProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
