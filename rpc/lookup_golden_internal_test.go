package rpc

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// goldenLookupPolicies place keys by a global permit on a key label, a
// global forbid on an edge label, and each key's own expression.
const goldenLookupPolicies = `
@id("edge-tier-keys")
permit (principal is Edge, action == Action::"HoldMaterial", resource)
when { resource.hasTag("tier") && resource.getTag("tier") == "edge" };

@id("no-quarantined-edges")
forbid (principal is Edge, action == Action::"HoldMaterial", resource)
when { principal.hasTag("quarantine") };
`

// lookupAnswers asks LookupKey's questions over random inventories, keys,
// operations, clients and answering nodes, with the central tier reachable
// and lost: one per line, the question and the first 8 bytes of the
// sha256 of the answer as bytes on the wire.
func lookupAnswers(t *testing.T) []string {
	t.Helper()
	set, err := policy.Parse(map[string][]byte{"hold.cedar": []byte(goldenLookupPolicies)})
	if err != nil {
		t.Fatal(err)
	}
	key := func(id string, typ managed.KeyType, mode managed.Mode, labels map[string]string, expr string) *managed.Key {
		return &managed.Key{ID: id, Type: typ, Mode: mode, State: managed.StateEnabled, Labels: labels, Placement: expr,
			Primary: 1, Versions: []managed.Version{{Version: 1, RootKey: "softkms:root-1"}}}
	}
	keys := []*managed.Key{
		key("eu-key", managed.AES256GCM, managed.ModeDerive, nil, `principal.region == "eu"`),
		key("edge-key", managed.AES256GCM, managed.ModeWrap, map[string]string{"tier": "edge"}, ""),
		key("pci-key", managed.HMACSHA256, managed.ModeDerive, nil, `principal.hasTag("pci") && principal.getTag("pci") == "yes"`),
		key("central-key", managed.AES256GCM, managed.ModeDerive, nil, ""),
		key("hsm-key", managed.ECDSAP256, managed.ModeBackend, map[string]string{"tier": "edge"}, ""),
	}
	regions := []string{"eu", "us", "ap", ""}
	labelSets := []map[string]string{nil, {"quarantine": "yes"}, {"pci": "yes"}, {"pci": "no", "rack": "r1"}}
	r := rand.New(rand.NewPCG(15, 0x6b6579))
	var out []string
	for inv := range 20 {
		var nodes []*kbv1.Node
		for i := range 1 + r.IntN(9) {
			n := &kbv1.Node{NodeId: fmt.Sprintf("n%d-%d", r.IntN(5), i), Kind: "edge", Address: fmt.Sprintf("n%d.example:7443", i),
				Region: regions[r.IntN(len(regions))], Labels: labelSets[r.IntN(len(labelSets))],
				Prefetch: r.IntN(2) == 0, Connected: r.IntN(4) != 0, Enrolled: true}
			if r.IntN(4) == 0 {
				n.Kind, n.Labels, n.Prefetch = "central", nil, false
			}
			nodes = append(nodes, n)
		}
		for _, k := range keys {
			for v := range int32(len(kbv1.Operation_name)) {
				op := kbv1.Operation(v)
				action, ok := operationAction(op)
				if !ok {
					continue
				}
				self := nodes[r.IntN(len(nodes))].GetNodeId()
				labels := map[string]string{"region": regions[r.IntN(len(regions))]}
				for _, lost := range []bool{false, true} {
					got := lookupToProto(placement.Lookup(placement.Input{Key: k, Op: action, ClientLabels: labels, Nodes: wire.NodesFromProto(nodes),
						Self: self, Policy: set, TrustDomain: "kb.test", CentralUnreachable: lost}))
					b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&kbv1.LookupKeyResponse{Nodes: got})
					if err != nil {
						t.Fatal(err)
					}
					sum := sha256.Sum256(b)
					out = append(out, fmt.Sprintf("inv%d %s %s region=%q self=%s lost=%v sha256:%s", inv, k.ID, op, labels["region"], self, lost, hex.EncodeToString(sum[:8])))
				}
			}
		}
	}
	return out
}

// TestLookupAnswersGolden holds LookupKey's answers byte for byte to those
// it gave when the ordering lived in this package over wire types
// (rpc/lookup.go, before package placement): testdata/lookup.golden, one
// answer digest a line, was written by that code.
func TestLookupAnswersGolden(t *testing.T) {
	golden, err := os.ReadFile(filepath.Join("testdata", "lookup.golden"))
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(string(golden))
	got := lookupAnswers(t)
	if len(got) != len(want) {
		t.Fatalf("%d answers, golden has %d", len(got), len(want))
	}
	for i, line := range got {
		if q, sum, _ := strings.Cut(line, " sha256:"); sum != want[i] {
			t.Errorf("answer to %s = sha256:%s, golden sha256:%s", q, sum, want[i])
		}
	}
}
