package etcdproc

import "syscall"

// procAttr puts a member in its own process group, so that a terminal's
// Ctrl-C reaches the parent alone, which stops the member in order; and
// has the kernel kill it when the parent dies without stopping it
// (kill -9), so that no member outlives its keybroker.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
