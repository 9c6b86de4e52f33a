//go:build linux

package edgecache

import (
	"os"

	"golang.org/x/sys/unix"
)

// readAhead asks the kernel to start reading the file at path into the
// page cache, whole, and returns without waiting. restore then walks
// replica.db's B+tree through bbolt's mmap, in key order: on a cold page
// cache that is one random read per page (a million keys' 1.9 GB took
// three minutes here, where reading the file in order takes 2.6 s).
// Nothing is lost if it fails: the walk reads what it needs.
func readAhead(path string) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_WILLNEED)
}
