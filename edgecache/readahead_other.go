//go:build !linux

package edgecache

// readAhead does nothing here (see readahead_linux.go).
func readAhead(string) {}
