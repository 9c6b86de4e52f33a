package placement_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// TestLookupCentralUnreachable: an edge that has lost the central tier
// does not offer it, nor edges that would only forward to it — the SDK
// routes by this answer, and used to be sent to a central tier that was
// down. Edges that serve locally are still offered, in the same order.
func TestLookupCentralUnreachable(t *testing.T) {
	set := holdSet(t)
	for _, tc := range []struct {
		name      string
		in        placement.Input
		reachable []string
		lost      []string
	}{
		{
			name:      "a key the eu edges hold",
			in:        placement.Input{Key: euKey, Op: policy.Encrypt, ClientLabels: map[string]string{"region": "eu"}},
			reachable: []string{"edge-eu-1" + held, "edge-eu-2" + fetch, "edge-eu-3" + fwd, "central-1" + root, "central-2" + root},
			lost:      []string{"edge-eu-1" + held, "edge-eu-2" + fetch},
		},
		{
			name:      "a key no edge holds: nothing to offer",
			in:        placement.Input{Key: centralKey, Op: policy.Encrypt, ClientLabels: map[string]string{"region": "eu"}},
			reachable: []string{"edge-eu-1" + fwd, "edge-eu-2" + fwd, "edge-eu-3" + fwd, "central-1" + root, "central-2" + root},
			lost:      []string{},
		},
		{
			name: "replica operations are still answered by every following edge",
			in:   placement.Input{Key: centralKey, Op: policy.DescribeKey, ClientLabels: map[string]string{"region": "ap"}},
			reachable: []string{"edge-ap-1" + replica, "edge-eu-1" + replica, "edge-eu-2" + replica, "edge-eu-3" + replica,
				"edge-us-1" + replica, "edge-us-2" + replica, "central-1" + root, "central-2" + root},
			lost: []string{"edge-ap-1" + replica, "edge-eu-1" + replica, "edge-eu-2" + replica, "edge-eu-3" + replica,
				"edge-us-1" + replica, "edge-us-2" + replica},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.Nodes, in.Policy, in.TrustDomain, in.Self = inventory(), set, td, "edge-eu-1"
			if diff := cmp.Diff(tc.reachable, summary(placement.Lookup(in))); diff != "" {
				t.Errorf("Lookup with the central tier reachable (-want +got):\n%s", diff)
			}
			in.CentralUnreachable = true
			if diff := cmp.Diff(tc.lost, summary(placement.Lookup(in))); diff != "" {
				t.Errorf("Lookup with the central tier lost (-want +got):\n%s", diff)
			}
		})
	}
}
