package agentproc

import "syscall"

// sysProcAttr makes the kernel kill a process when its parent dies.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
