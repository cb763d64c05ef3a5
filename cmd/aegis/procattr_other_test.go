//go:build unix && !linux

// This file holds the process attributes of agents started by tests on
// Unix systems other than Linux.

package main

import "syscall"

// procAttr has nothing to add: only Linux can kill a child when its parent
// dies; the tests' cleanups kill every agent they started.
func procAttr() *syscall.SysProcAttr { return nil }
