package placement_test

import (
	"testing"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
)

// TestHold: the decision the central tier audits when it seals material
// to an edge names the policy that decided, and MayHold is Hold for keys
// with material, false for backend-mode keys.
func TestHold(t *testing.T) {
	set := holdSet(t)
	for _, tc := range []struct {
		name     string
		key      *managed.Key
		edge     placement.Node
		allowed  bool
		policyID string
	}{
		{"global permit by key label", edgeKey, edge("edge-us-1", "us", true, true, nil), true, "edge-tier-keys"},
		{"global forbid wins", edgeKey, edge("edge-eu-3", "eu", true, true, quarantined), false, "no-quarantined-edges"},
		{"placement expression", euKey, edge("edge-eu-1", "eu", true, true, nil), true, ""},
		{"placement expression, other region", euKey, edge("edge-us-1", "us", true, true, nil), false, ""},
		{"placed nowhere", centralKey, edge("edge-eu-1", "eu", true, true, nil), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := placement.Hold(tc.key, tc.edge, set, td)
			if d.Allowed != tc.allowed {
				t.Errorf("Hold(%s, %s).Allowed = %v, want %v", tc.key.ID, tc.edge.ID, d.Allowed, tc.allowed)
			}
			if tc.policyID != "" && d.PolicyID() != tc.policyID {
				t.Errorf("Hold(%s, %s).PolicyID() = %q, want %q", tc.key.ID, tc.edge.ID, d.PolicyID(), tc.policyID)
			}
		})
	}
	for _, k := range []*managed.Key{euKey, edgeKey, pciKey, centralKey, hsmKey, hsmPlacedKey} {
		for _, n := range inventory() {
			want := k.Mode != managed.ModeBackend && placement.Hold(k, n, set, td).Allowed
			if got := placement.MayHold(k, &n, set, td); got != want {
				t.Errorf("MayHold(%s, %s) = %v, want %v", k.ID, n.ID, got, want)
			}
		}
	}
}
