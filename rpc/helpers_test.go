package rpc_test

import "github.com/keybroker/keybroker/managed"

// Kept from the lookup tests, which moved to package placement.

const td = "kb.test"

func testKey(id string, typ managed.KeyType, mode managed.Mode, labels map[string]string, placement string) *managed.Key {
	return &managed.Key{ID: id, Type: typ, Mode: mode, State: managed.StateEnabled, Labels: labels, Placement: placement,
		Primary: 1, Versions: []managed.Version{{Version: 1, RootKey: "softkms:root-1"}}}
}
