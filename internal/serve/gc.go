package serve

import (
	"runtime/debug"
	"strconv"
)

// DefaultGCPercent is the garbage collector's target a keybroker process
// runs with unless the environment sets GOGC. A node's live heap is small
// (keys, caches, connections: tens of MiB) while each call allocates a few
// KiB, so at Go's default of 100 the collector ran many times a second
// under load and took about a tenth of the CPU; at 400 the heap may grow to
// five times the live heap between collections. GOMEMLIMIT, when set, still
// bounds the heap as the runtime documents.
const DefaultGCPercent = 400

// TuneGC sets the collector's target to DefaultGCPercent unless getenv
// gives GOGC, and returns the target in force (-1: off).
func TuneGC(getenv func(string) string) int {
	if v := getenv("GOGC"); v != "" {
		if v == "off" {
			return -1
		}
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
		return 100 // the runtime ignores a malformed GOGC
	}
	debug.SetGCPercent(DefaultGCPercent)
	return DefaultGCPercent
}
