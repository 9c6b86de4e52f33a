//go:build tools

// Package h2spec pins h2spec (github.com/summerwind/h2spec), the HTTP/2
// conformance suite, and its dependencies, so that `make h2spec` builds the
// same tool every time and runs it against internal/h2serve (TestH2spec).
// It is a module of its own so that h2spec's dependencies stay out of
// keybroker's.
package h2spec

import _ "github.com/summerwind/h2spec/cmd/h2spec"
