package placement_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

const td = "kb.test"

// The global HoldMaterial policies: keys labelled tier=edge may be held by
// any edge, quarantined edges hold nothing. Other keys are placed by their
// own placement expression or not at all (default deny).
const holdPolicies = `
@id("edge-tier-keys")
permit (principal is Edge, action == Action::"HoldMaterial", resource)
when { resource.hasTag("tier") && resource.getTag("tier") == "edge" };

@id("no-quarantined-edges")
forbid (principal is Edge, action == Action::"HoldMaterial", resource)
when { principal.hasTag("quarantine") };
`

func holdSet(t *testing.T) *policy.Set {
	t.Helper()
	s, err := policy.Parse(map[string][]byte{"hold.cedar": []byte(holdPolicies)})
	if err != nil {
		t.Fatalf("policy.Parse = %v", err)
	}
	return s
}

func testKey(id string, typ managed.KeyType, mode managed.Mode, labels map[string]string, placement string) *managed.Key {
	return &managed.Key{ID: id, Type: typ, Mode: mode, State: managed.StateEnabled, Labels: labels, Placement: placement,
		Primary: 1, Versions: []managed.Version{{Version: 1, RootKey: "softkms:root-1"}}}
}

var (
	// euKey is placed on edges in region eu by its own expression.
	euKey = testKey("eu-key", managed.AES256GCM, managed.ModeDerive, nil, `principal.region == "eu"`)
	// edgeKey is placed on every edge by the global policy.
	edgeKey = testKey("edge-key", managed.AES256GCM, managed.ModeWrap, map[string]string{"tier": "edge"}, "")
	// pciKey is placed by an edge label.
	pciKey = testKey("pci-key", managed.HMACSHA256, managed.ModeDerive, nil, `principal.hasTag("pci") && principal.getTag("pci") == "yes"`)
	// centralKey is placed nowhere.
	centralKey = testKey("central-key", managed.AES256GCM, managed.ModeDerive, nil, "")
	// hsmKey is a backend-mode key the global policy would place on every
	// edge, but it has no material to hold.
	hsmKey = testKey("hsm-key", managed.ECDSAP256, managed.ModeBackend, map[string]string{"tier": "edge"}, "")
	// hsmPlacedKey is a backend-mode key with a placement expression that
	// matches eu edges.
	hsmPlacedKey = testKey("hsm-placed-key", managed.ECDSAP256, managed.ModeBackend, nil, `principal.region == "eu"`)
)

func edge(id, region string, prefetch, connected bool, labels map[string]string) placement.Node {
	return placement.Node{ID: id, Kind: "edge", Address: id + ".example:7443", Region: region, Prefetch: prefetch,
		Connected: connected, Labels: labels}
}

func central(id, region string) placement.Node {
	return placement.Node{ID: id, Kind: "central", Address: id + ".example:7443", Region: region}
}

var quarantined = map[string]string{"quarantine": "yes"}

// inventory is a cluster with two central nodes and edges in eu, us and
// ap. Ids are chosen so that id order differs from the order the groups
// produce.
func inventory() []placement.Node {
	return []placement.Node{
		central("central-2", "us"),
		edge("edge-us-2", "us", false, true, quarantined),
		edge("edge-eu-2", "eu", false, true, nil),
		edge("edge-eu-4", "eu", true, false, nil), // not following the central tier
		edge("edge-ap-1", "ap", false, true, nil),
		edge("edge-eu-3", "eu", true, true, quarantined),
		central("central-1", "eu"),
		edge("edge-us-1", "us", true, true, map[string]string{"pci": "yes"}),
		edge("edge-us-3", "us", true, false, map[string]string{"pci": "yes"}), // not following the central tier
		edge("edge-eu-1", "eu", true, true, nil),
	}
}

// summary renders a lookup answer as "node-id REASON" lines.
func summary(nodes []placement.Candidate) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Node.ID + " " + n.Reason.String()
	}
	return out
}

const (
	held    = " MATERIAL_HELD"
	fetch   = " PLACEMENT_ALLOWS_FETCH"
	fwd     = " FORWARD_ONLY"
	replica = " REPLICA"
	root    = " ROOT_OF_TRUST"
)

var centrals = []string{"central-1" + root, "central-2" + root}

func list(groups ...[]string) []string {
	return slices.Concat(groups...)
}

func region(r string) map[string]string { return map[string]string{"region": r} }

type lookupCase struct {
	name   string
	key    *managed.Key
	op     policy.Action
	labels map[string]string
	self   string
	want   []string
}

var lookupCases = []lookupCase{
	{
		name: "placement by region, eu client", key: euKey, op: policy.Encrypt, labels: region("eu"), self: "edge-us-1",
		want: list([]string{"edge-eu-1" + held, "edge-eu-2" + fetch}, // group 1
			[]string{"edge-eu-3" + fwd}, // group 3: quarantined, so forwarding
			centrals),
	},
	{
		name: "placement by region, us client", key: euKey, op: policy.Decrypt, labels: region("us"), self: "edge-eu-1",
		want: list([]string{"edge-eu-1" + held, "edge-eu-2" + fetch}, // group 2
			[]string{"edge-us-1" + fwd, "edge-us-2" + fwd}, // group 3
			centrals),
	},
	{
		name: "client in a region with no edges", key: euKey, op: policy.GenerateDataKey, labels: region("sa"), self: "central-1",
		want: list([]string{"edge-eu-1" + held, "edge-eu-2" + fetch}, centrals),
	},
	{
		name: "global policy places on every edge, us client", key: edgeKey, op: policy.Encrypt, labels: region("us"), self: "edge-eu-1",
		want: list([]string{"edge-us-1" + held}, // group 1
			[]string{"edge-ap-1" + fetch, "edge-eu-1" + held, "edge-eu-2" + fetch}, // group 2
			[]string{"edge-us-2" + fwd}, // group 3; edge-eu-3 forwards from another region: left out
			centrals),
	},
	{
		name: "placement by edge label", key: pciKey, op: policy.GenerateMac, labels: region("eu"), self: "central-2",
		want: list([]string{"edge-us-1" + held}, // group 2; edge-us-3 also matches but is not connected
			[]string{"edge-eu-1" + fwd, "edge-eu-2" + fwd, "edge-eu-3" + fwd},
			centrals),
	},
	{
		name: "key placed nowhere", key: centralKey, op: policy.ReEncrypt, labels: region("eu"), self: "edge-eu-1",
		want: list([]string{"edge-eu-1" + fwd, "edge-eu-2" + fwd, "edge-eu-3" + fwd}, centrals),
	},
	{
		name: "key placed nowhere, client in a region with no edges", key: centralKey, op: policy.Encrypt, labels: region("sa"), self: "edge-eu-1",
		want: centrals,
	},
	{
		name: "backend-mode key: every edge forwards material operations", key: hsmKey, op: policy.Sign, labels: region("us"), self: "edge-us-1",
		want: list([]string{"edge-us-1" + fwd, "edge-us-2" + fwd}, centrals),
	},
	{
		name: "backend-mode key with placement still forwards", key: hsmPlacedKey, op: policy.Sign, labels: region("eu"), self: "edge-eu-1",
		want: list([]string{"edge-eu-1" + fwd, "edge-eu-2" + fwd, "edge-eu-3" + fwd}, centrals),
	},
	{
		name: "verify is served from every connected replica, backend mode included", key: hsmKey, op: policy.Verify, labels: region("eu"), self: "edge-us-1",
		want: list([]string{"edge-eu-1" + replica, "edge-eu-2" + replica, "edge-eu-3" + replica},
			[]string{"edge-ap-1" + replica, "edge-us-1" + replica, "edge-us-2" + replica},
			centrals),
	},
	{
		name: "get-public-key from the replica of an unplaced key", key: centralKey, op: policy.GetPublicKey, labels: region("ap"), self: "edge-us-1",
		want: list([]string{"edge-ap-1" + replica},
			[]string{"edge-eu-1" + replica, "edge-eu-2" + replica, "edge-eu-3" + replica, "edge-us-1" + replica, "edge-us-2" + replica},
			centrals),
	},
	{
		name: "describe-key from the replica", key: euKey, op: policy.DescribeKey, labels: region("us"), self: "edge-us-2",
		want: list([]string{"edge-us-1" + replica, "edge-us-2" + replica},
			[]string{"edge-ap-1" + replica, "edge-eu-1" + replica, "edge-eu-2" + replica, "edge-eu-3" + replica},
			centrals),
	},
	{
		name: "verify-mac needs material", key: pciKey, op: policy.VerifyMac, labels: region("us"), self: "edge-eu-1",
		want: list([]string{"edge-us-1" + held}, []string{"edge-us-2" + fwd}, centrals),
	},
	// A client that gives no region is local to the answering node.
	{
		name: "no region: self's region, self first in group 1", key: euKey, op: policy.Encrypt, self: "edge-eu-2",
		want: list([]string{"edge-eu-2" + fetch, "edge-eu-1" + held}, []string{"edge-eu-3" + fwd}, centrals),
	},
	{
		name: "no region: self first in group 1, other groups in id order", key: edgeKey, op: policy.Encrypt, self: "edge-eu-2",
		want: list([]string{"edge-eu-2" + fetch, "edge-eu-1" + held},
			[]string{"edge-ap-1" + fetch, "edge-us-1" + held},
			[]string{"edge-eu-3" + fwd},
			centrals),
	},
	{
		name: "no region: forwarding self first in group 3", key: centralKey, op: policy.Decrypt, self: "edge-us-2",
		want: list([]string{"edge-us-2" + fwd, "edge-us-1" + fwd}, centrals),
	},
	{
		name: "no region: quarantined self in group 3 after the group 1 edges", key: edgeKey, op: policy.Encrypt, self: "edge-eu-3",
		want: list([]string{"edge-eu-1" + held, "edge-eu-2" + fetch},
			[]string{"edge-ap-1" + fetch, "edge-us-1" + held},
			[]string{"edge-eu-3" + fwd},
			centrals),
	},
	{
		name: "no region: central self takes its region and comes first among centrals", key: euKey, op: policy.Encrypt, self: "central-2",
		want: list([]string{"edge-eu-1" + held, "edge-eu-2" + fetch},
			[]string{"edge-us-1" + fwd, "edge-us-2" + fwd},
			[]string{"central-2" + root, "central-1" + root}),
	},
	{
		name: "labels without region are no region", key: euKey, op: policy.Encrypt, labels: map[string]string{"team": "payments"}, self: "edge-us-1",
		want: list([]string{"edge-eu-1" + held, "edge-eu-2" + fetch}, []string{"edge-us-1" + fwd, "edge-us-2" + fwd}, centrals),
	},
	{
		name: "empty region label is no region", key: euKey, op: policy.Encrypt, labels: region(""), self: "edge-eu-2",
		want: list([]string{"edge-eu-2" + fetch, "edge-eu-1" + held}, []string{"edge-eu-3" + fwd}, centrals),
	},
	{
		name: "region given: self is not preferred", key: euKey, op: policy.Encrypt, labels: region("eu"), self: "edge-eu-2",
		want: list([]string{"edge-eu-1" + held, "edge-eu-2" + fetch}, []string{"edge-eu-3" + fwd}, centrals),
	},
}

func lookup(set *policy.Set, c lookupCase, nodes []placement.Node, self string) []placement.Candidate {
	return placement.Lookup(placement.Input{Key: c.key, Op: c.op, ClientLabels: c.labels, Nodes: nodes, Self: self,
		Policy: set, TrustDomain: td})
}

func TestLookupOrder(t *testing.T) {
	set := holdSet(t)
	for _, c := range lookupCases {
		t.Run(c.name, func(t *testing.T) {
			got := summary(lookup(set, c, inventory(), c.self))
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("Lookup(%s, %s, labels %v, self %s) mismatch (-want +got):\n%s", c.key.ID, c.op, c.labels, c.self, diff)
			}
		})
	}
}

// TestLookupNodeFields checks that each answer carries the inventory's
// address, kind and region for the node it names.
func TestLookupNodeFields(t *testing.T) {
	set := holdSet(t)
	byID := map[string]placement.Node{}
	for _, n := range inventory() {
		byID[n.ID] = n
	}
	for _, c := range lookupCases {
		for _, got := range lookup(set, c, inventory(), c.self) {
			want := byID[got.Node.ID]
			if diff := cmp.Diff(want, got.Node); diff != "" {
				t.Errorf("%s: node %s mismatch (-want +got):\n%s", c.name, want.ID, diff)
			}
		}
	}
}

// TestLookupIgnoresInventoryOrder shuffles the inventory: the answer must
// not change.
func TestLookupIgnoresInventoryOrder(t *testing.T) {
	set := holdSet(t)
	for i, c := range lookupCases {
		t.Run(c.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(i), 0x6b6579))
			want := summary(lookup(set, c, inventory(), c.self))
			for range 25 {
				nodes := inventory()
				r.Shuffle(len(nodes), func(a, b int) { nodes[a], nodes[b] = nodes[b], nodes[a] })
				if got := summary(lookup(set, c, nodes, c.self)); !slices.Equal(got, want) {
					t.Fatalf("Lookup over inventory %v = %v, want %v", ids(nodes), got, want)
				}
			}
		})
	}
}

// TestLookupAgreement asks every node for a client that gives its region:
// all must give the same answer.
func TestLookupAgreement(t *testing.T) {
	set := holdSet(t)
	for _, c := range lookupCases {
		if c.labels["region"] == "" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			want := summary(lookup(set, c, inventory(), c.self))
			for _, n := range append(inventory(), edge("not-in-inventory", "eu", true, true, nil)) {
				self := n.ID
				if got := summary(lookup(set, c, inventory(), self)); !slices.Equal(got, want) {
					t.Errorf("Lookup answered by %s = %v, want %v (answered by %s)", self, got, want, c.self)
				}
			}
		})
	}
}

func ids(nodes []placement.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.ID
	}
	return out
}

func TestLookupEmptyInventory(t *testing.T) {
	got := placement.Lookup(placement.Input{Key: euKey, Op: policy.Encrypt, Self: "edge-eu-1", Policy: holdSet(t), TrustDomain: td})
	if len(got) != 0 {
		t.Errorf("Lookup with no nodes = %v, want none", summary(got))
	}
}

func TestLookupDoesNotModifyInventory(t *testing.T) {
	set := holdSet(t)
	nodes := inventory()
	before := ids(nodes)
	for _, c := range lookupCases {
		lookup(set, c, nodes, c.self)
	}
	if diff := cmp.Diff(inventory(), nodes); diff != "" {
		t.Errorf("Lookup changed the inventory %v (-before +after):\n%s", before, diff)
	}
}

func TestMayHold(t *testing.T) {
	set := holdSet(t)
	euEdge := edge("edge-eu-1", "eu", true, true, nil)
	usEdge := edge("edge-us-1", "us", true, true, nil)
	pciEdge := edge("edge-us-2", "us", false, true, map[string]string{"pci": "yes"})
	noPCIEdge := edge("edge-us-3", "us", false, true, map[string]string{"pci": "no"})
	badEdge := edge("edge-eu-9", "eu", true, true, quarantined)
	offline := edge("edge-eu-5", "eu", true, false, nil)
	for _, tc := range []struct {
		name string
		key  *managed.Key
		edge placement.Node
		want bool
	}{
		{"placement matches region", euKey, euEdge, true},
		{"placement does not match region", euKey, usEdge, false},
		{"global forbid beats placement", euKey, badEdge, false},
		{"connection does not matter", euKey, offline, true},
		{"global permit by key label", edgeKey, usEdge, true},
		{"global permit, global forbid", edgeKey, badEdge, false},
		{"placement by edge label", pciKey, pciEdge, true},
		{"placement by edge label, other value", pciKey, noPCIEdge, false},
		{"placement by edge label, no label", pciKey, euEdge, false},
		{"no policy places the key", centralKey, euEdge, false},
		{"backend mode, globally permitted", hsmKey, euEdge, false},
		{"backend mode, placement matches", hsmPlacedKey, euEdge, false},
		{"invalid stored placement denies", testKey("broken", managed.AES256GCM, managed.ModeDerive, nil, `principal.regoin == "eu"`), euEdge, false},
		{"placement of another key", testKey("other", managed.AES256GCM, managed.ModeDerive, nil, ""), euEdge, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := placement.MayHold(tc.key, &tc.edge, set, td); got != tc.want {
				t.Errorf("MayHold(%s, %s) = %v, want %v", tc.key.ID, tc.edge.ID, got, tc.want)
			}
		})
	}
}

// TestMayHoldTrustDomain checks that the trust domain reaches Cedar: a
// placement on principal.trust_domain follows it.
func TestMayHoldTrustDomain(t *testing.T) {
	set := holdSet(t)
	k := testKey("td-key", managed.AES256GCM, managed.ModeDerive, nil, `principal.trust_domain == "kb.test"`)
	e := edge("edge-eu-1", "eu", true, true, nil)
	if !placement.MayHold(k, &e, set, "kb.test") {
		t.Error(`MayHold in trust domain kb.test = false, want true`)
	}
	if placement.MayHold(k, &e, set, "other.test") {
		t.Error(`MayHold in trust domain other.test = true, want false`)
	}
}

// ops is every operation LookupKey names (package rpc maps the API's
// operations onto them), and none.
var ops = []policy.Action{"", policy.Encrypt, policy.Decrypt, policy.ReEncrypt, policy.GenerateDataKey, policy.Sign, policy.Verify,
	policy.GetPublicKey, policy.GenerateMac, policy.VerifyMac, policy.DescribeKey, policy.DecryptDataKey}

func TestEdgeReason(t *testing.T) {
	set := holdSet(t)
	prefetching := edge("edge-eu-1", "eu", true, true, nil)
	lazy := edge("edge-eu-2", "eu", false, true, nil)
	replicaOps := map[policy.Action]bool{
		policy.Verify:       true,
		policy.GetPublicKey: true,
		policy.DescribeKey:  true,
	}
	for _, tc := range []struct {
		key            *managed.Key
		edge           placement.Node
		wantMaterialOp placement.Reason
	}{
		{euKey, prefetching, placement.MaterialHeld},
		{euKey, lazy, placement.PlacementAllowsFetch},
		{edgeKey, prefetching, placement.MaterialHeld},
		{edgeKey, lazy, placement.PlacementAllowsFetch},
		{centralKey, prefetching, placement.ForwardOnly},
		{centralKey, lazy, placement.ForwardOnly},
		{hsmKey, prefetching, placement.ForwardOnly},
		{hsmKey, lazy, placement.ForwardOnly},
		{hsmPlacedKey, prefetching, placement.ForwardOnly},
		{pciKey, prefetching, placement.ForwardOnly},
	} {
		// Every operation LookupKey names, unspecified included.
		for _, op := range ops {
			want := tc.wantMaterialOp
			if replicaOps[op] {
				want = placement.Replica
			}
			t.Run(fmt.Sprintf("%s/%s/%s", tc.key.ID, tc.edge.ID, op), func(t *testing.T) {
				if got := placement.EdgeReason(tc.key, op, &tc.edge, set, td); got != want {
					t.Errorf("EdgeReason(%s, %s, %s) = %s, want %s", tc.key.ID, op, tc.edge.ID, got, want)
				}
			})
		}
	}
}

func TestEdgePrincipal(t *testing.T) {
	for _, tc := range []struct {
		name string
		node placement.Node
		want policy.Principal
	}{
		{"full", edge("edge-eu-1", "eu", true, true, map[string]string{"pci": "yes", "rack": "r7"}),
			policy.Principal{Kind: policy.KindEdge, Name: "edge-eu-1", TrustDomain: td, Region: "eu", Labels: map[string]string{"pci": "yes", "rack": "r7"}}},
		{"no region or labels", placement.Node{ID: "edge-x", Kind: "edge"},
			policy.Principal{Kind: policy.KindEdge, Name: "edge-x", TrustDomain: td}},
		// The kind is always edge: it is how placement sees any node.
		{"central node", central("central-1", "eu"),
			policy.Principal{Kind: policy.KindEdge, Name: "central-1", TrustDomain: td, Region: "eu"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := placement.EdgePrincipal(tc.node, td)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("EdgePrincipal mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLookupInventoryShapes covers inventories as the nodes build them: the
// central tier lists itself with no region, and an edge can be answering
// while the inventory says it is not connected.
func TestLookupInventoryShapes(t *testing.T) {
	set := holdSet(t)
	// As broker/server builds it: the central node first, without a region.
	nodes := func() []placement.Node {
		return []placement.Node{
			{ID: "central-0", Kind: "central", Address: "central-0.example:7443"},
			edge("edge-eu-1", "eu", true, true, nil),
			edge("edge-eu-2", "eu", false, false, nil),
			edge("edge-us-1", "us", false, true, nil),
		}
	}
	for _, tc := range []struct {
		name   string
		key    *managed.Key
		labels map[string]string
		self   string
		want   []string
	}{
		{
			// The central tier's region is "": no edge is local, so
			// forwarding edges are all left out.
			name: "no region, asked at a regionless central tier", key: edgeKey, self: "central-0",
			want: []string{"edge-eu-1" + held, "edge-us-1" + fetch, "central-0" + root},
		},
		{
			name: "no region, asked at a regionless central tier, key placed nowhere", key: centralKey, self: "central-0",
			want: []string{"central-0" + root},
		},
		{
			name: "region given, asked at the central tier", key: centralKey, labels: region("us"), self: "central-0",
			want: []string{"edge-us-1" + fwd, "central-0" + root},
		},
		{
			// A disconnected edge is left out even when it answers, but
			// its region is still the client's.
			name: "no region, asked at a disconnected edge", key: euKey, self: "edge-eu-2",
			want: []string{"edge-eu-1" + held, "central-0" + root},
		},
		{
			name: "no region, asked at a disconnected edge, forwarding", key: centralKey, self: "edge-eu-2",
			want: []string{"edge-eu-1" + fwd, "central-0" + root},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := summary(placement.Lookup(placement.Input{Key: tc.key, Op: policy.Encrypt, ClientLabels: tc.labels,
				Nodes: nodes(), Self: tc.self, Policy: set, TrustDomain: td}))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Lookup mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
