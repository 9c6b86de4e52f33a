package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

// TestListKeysDisclosesOnlyDescribable runs a central node and an edge as
// real processes: a client the policy lets describe only its own keys
// (e2ePolicy's app-keys: label owner) lists, at either node, exactly those
// keys, in full pages whose tokens name only them, and without their root
// key; an admin lists every key with its root key.
func TestListKeysDisclosesOnlyDescribable(t *testing.T) {
	c := newEdgeClusterOn(t, softkmsRoots, basicRoots, "", &edgeNode{name: "edge-eu-1", region: "eu", prefetch: true, staleness: time.Hour})
	ctx := t.Context()
	var mine, all []string
	var rev uint64
	for i := range 7 {
		for _, team := range []string{"mine", "theirs"} {
			id := fmt.Sprintf("%s-%02d", team, i)
			labels := map[string]string{"team": team}
			if team == "mine" {
				labels["owner"] = e2eTrustDomain
				mine = append(mine, id)
			}
			all = append(all, id)
			m, err := c.admin.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
				Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: labels, Placement: "true", Description: "team " + team})
			must(t, "CreateKey "+id, err)
			rev = max(rev, m.GetRevision())
		}
	}
	slices.Sort(all)
	c.waitApplied(t, rev)

	nodes := map[string]string{"central": c.central.addr, "edge": c.edges["edge-eu-1"].p.addr}
	for node, addr := range nodes {
		for _, tc := range []struct {
			kind     identity.Kind
			want     []string
			rootKeys bool
		}{
			{identity.Client, mine, false},
			{identity.Admin, all, true},
		} {
			t.Run(node+"/"+string(tc.kind), func(t *testing.T) {
				cl := c.dial(t, addr, tc.kind, "app")
				var got []string
				token := ""
				for page := 0; ; page++ {
					if page > 20 {
						t.Fatal("ListKeys did not end in 20 pages")
					}
					resp, err := cl.kb.ListKeys(ctx, &kbv1.ListKeysRequest{PageSize: 3, PageToken: token})
					must(t, "ListKeys", err)
					for _, k := range resp.GetKeys() {
						got = append(got, k.GetKeyId())
						if has := k.GetRootKey() != ""; has != tc.rootKeys {
							t.Errorf("ListKeys as %s: %s root_key %q; want one: %v", tc.kind, k.GetKeyId(), k.GetRootKey(), tc.rootKeys)
						}
					}
					token = resp.GetNextPageToken()
					if token == "" {
						break
					}
					if len(resp.GetKeys()) != 3 {
						t.Errorf("ListKeys as %s: a page of %d keys before the last, want 3", tc.kind, len(resp.GetKeys()))
					}
					if !slices.Contains(tc.want, token) {
						t.Errorf("ListKeys as %s: page token %q names a key it may not describe", tc.kind, token)
					}
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("ListKeys as %s at %s = %v, want %v", tc.kind, node, got, tc.want)
				}
				// A selector on another team's labels finds nothing.
				resp, err := cl.kb.ListKeys(ctx, &kbv1.ListKeysRequest{LabelSelector: map[string]string{"team": "theirs"}})
				must(t, "ListKeys team=theirs", err)
				if n := len(resp.GetKeys()); tc.kind == identity.Client && n != 0 {
					t.Errorf("ListKeys team=theirs as a client = %d keys, want none", n)
				}
				d, err := cl.kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "mine-00"})
				must(t, "DescribeKey", err)
				if has := d.GetKey().GetRootKey() != ""; has != tc.rootKeys || (has && !strings.Contains(d.GetKey().GetRootKey(), "root-prf")) {
					t.Errorf("DescribeKey as %s at %s: root_key %q; want one: %v", tc.kind, node, d.GetKey().GetRootKey(), tc.rootKeys)
				}
			})
		}
	}
}
