package edgecache

import (
	"go/build"
	"strings"
	"testing"
)

// TestNoImportOfTheGRPCFrontEnd: the edge's cache is a Performer of
// package pipeline; it reads a call's ids through internal/callinfo and
// converts the wire through internal/wire, and never climbs back into the
// gRPC front-end (package rpc) that serves it — directly or through
// anything it imports.
func TestNoImportOfTheGRPCFrontEnd(t *testing.T) {
	const module = "github.com/keybroker/keybroker/"
	seen := map[string]bool{}
	var walk func(path, from string)
	walk = func(path, from string) {
		if seen[path] {
			return
		}
		seen[path] = true
		if path == module+"rpc" {
			t.Errorf("edgecache imports package rpc (through %s)", from)
			return
		}
		pkg, err := build.Import(path, ".", 0)
		if err != nil {
			t.Fatalf("import %s: %v", path, err)
		}
		for _, imp := range pkg.Imports {
			if strings.HasPrefix(imp, module) {
				walk(imp, path)
			}
		}
	}
	walk(module+"edgecache", "")
	if len(seen) < 5 {
		t.Fatalf("walked only %d packages: %v", len(seen), seen)
	}
}
