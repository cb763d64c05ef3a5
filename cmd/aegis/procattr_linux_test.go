// This file holds the process attributes of agents started by tests on
// Linux.

package main

import "syscall"

// procAttr makes the kernel kill an agent when the test process dies, so
// that none is left behind even when the test binary is killed.
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
