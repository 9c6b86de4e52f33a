package backendtest

import "testing"

func run(t *testing.T, open func(t *testing.T) *Fixture) { _ = open(t) }
