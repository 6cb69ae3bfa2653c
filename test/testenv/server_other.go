//go:build !linux

package testenv

import "syscall"

// serverProcAttr asks for nothing special outside Linux: the tests and the benchmark run on Linux.
func serverProcAttr() *syscall.SysProcAttr { return nil }
