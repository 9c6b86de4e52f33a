//go:build !linux

package etcdproc

import "syscall"

// procAttr puts a member in its own process group, so that a terminal's
// Ctrl-C reaches the parent alone, which stops the member in order. Only
// Linux also kills it when the parent dies.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
