package edgecache

import (
	"sync"
	"testing"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// TestNodesEventRacesNoLookup: applying an inventory event while LookupKey
// reads the inventory is not a data race (run with -race): nothing writes
// the cache's state under its read lock.
func TestNodesEventRacesNoLookup(t *testing.T) {
	ec := open(t, edgeConfig(t, nil, "edge-1", t.TempDir()))
	k := &managed.Key{ID: "k"}
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range 200 {
			region := []string{"eu", "us"}[i%2]
			ev := &kbv1.WatchEvent{Event: &kbv1.WatchEvent_Nodes{Nodes: &kbv1.ListNodesResponse{Nodes: []*kbv1.Node{
				{NodeId: "edge-1", Kind: "edge", Region: region}, {NodeId: "edge-2", Kind: "edge", Region: "eu"},
			}}}}
			if err := ec.apply(ev); err != nil {
				t.Errorf("apply: %v", err)
				return
			}
		}
	})
	wg.Go(func() {
		for range 200 {
			if _, err := ec.Performer().LookupKey(t.Context(), k, policy.Decrypt, nil); err != nil {
				t.Errorf("LookupKey: %v", err)
				return
			}
		}
	})
	wg.Wait()
}
