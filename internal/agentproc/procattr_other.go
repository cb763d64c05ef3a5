//go:build unix && !linux

package agentproc

import "syscall"

// sysProcAttr has nothing to add: only Linux can kill a process when its
// parent dies, so elsewhere a killed parent may leave its agents behind.
func sysProcAttr() *syscall.SysProcAttr { return nil }
