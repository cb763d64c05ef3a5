//go:build unix && !linux

// This file holds the process attributes of agents off Linux.

package main

import "syscall"

// procAttr returns no attributes: only Linux can kill the agents with the
// soak process, so elsewhere a killed soak may leave agents behind.
func procAttr() *syscall.SysProcAttr { return nil }
