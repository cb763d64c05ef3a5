// This file holds the process attributes of agents on Linux.

package main

import "syscall"

// procAttr makes the kernel kill an agent when the soak process dies, so
// that none is left behind even when the soak is killed itself.
func procAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
