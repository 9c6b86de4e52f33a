package store_test

import (
	"path/filepath"
	"testing"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/broker/store/storetest"
)

// TestBolt runs the conformance suite on the bbolt store, reopened from
// its file.
func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		path := filepath.Join(t.TempDir(), "registry.db")
		return func() (store.Store, error) { return store.Open(path, 0) }
	})
}
