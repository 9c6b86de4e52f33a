package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"github.com/keybroker/keybroker/managed"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/secret"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestListKeysDisclosesOnlyDescribable runs a central node and an edge as
// real processes: a client the policy lets describe only its own keys
// (e2ePolicy's app-keys: label owner) lists, at either node, exactly those
// keys, in full pages whose tokens name only them, and without their root
// key; an admin lists every key with its root key.
func TestListKeysDisclosesOnlyDescribable(t *testing.T) {
	c := framework.NewProcessesOn(t, framework.SoftkmsRoots, framework.BasicRoots, "", &framework.EdgeNode{Name: "edge-eu-1", Region: "eu", Prefetch: true, Staleness: time.Hour})
	ctx := t.Context()
	var mine, all []string
	var rev uint64
	for i := range 7 {
		for _, team := range []string{"mine", "theirs"} {
			id := fmt.Sprintf("%s-%02d", team, i)
			labels := map[string]string{"team": team}
			if team == "mine" {
				labels["owner"] = framework.TrustDomain
				mine = append(mine, id)
			}
			all = append(all, id)
			m, err := c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
				Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: labels, Placement: "true", Description: "team " + team})
			must(t, "CreateKey "+id, err)
			rev = max(rev, m.GetRevision())
		}
	}
	slices.Sort(all)
	c.WaitApplied(t, rev)

	nodes := map[string]string{"central": c.Central.Addr, "edge": c.Edges["edge-eu-1"].Proc.Addr}
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
				cl := c.Dial(t, addr, tc.kind, "app")
				var got []string
				token := ""
				for page := 0; ; page++ {
					if page > 20 {
						t.Fatal("ListKeys did not end in 20 pages")
					}
					resp, err := cl.KB.ListKeys(ctx, &kbv1.ListKeysRequest{PageSize: 3, PageToken: token})
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
					if id, err := managed.PageAfter(token, nil); err != nil || !slices.Contains(tc.want, id) {
						t.Errorf("ListKeys as %s: page token %q names %q (%v), a key it may not describe", tc.kind, token, id, err)
					}
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("ListKeys as %s at %s = %v, want %v", tc.kind, node, got, tc.want)
				}
				// A selector on another team's labels finds nothing.
				resp, err := cl.KB.ListKeys(ctx, &kbv1.ListKeysRequest{LabelSelector: map[string]string{"team": "theirs"}})
				must(t, "ListKeys team=theirs", err)
				if n := len(resp.GetKeys()); tc.kind == identity.Client && n != 0 {
					t.Errorf("ListKeys team=theirs as a client = %d keys, want none", n)
				}
				d, err := cl.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "mine-00"})
				must(t, "DescribeKey", err)
				if has := d.GetKey().GetRootKey() != ""; has != tc.rootKeys || (has && !strings.Contains(d.GetKey().GetRootKey(), "root-prf")) {
					t.Errorf("DescribeKey as %s at %s: root_key %q; want one: %v", tc.kind, node, d.GetKey().GetRootKey(), tc.rootKeys)
				}
			})
		}
	}
}

// forgedCiphertext is a well-formed ciphertext naming version 1 of keyID
// whose wrapped data key is made up (seed varies it).
func forgedCiphertext(t *testing.T, keyID string, seed uint64) []byte {
	t.Helper()
	wrapped := bytes.Repeat([]byte{0x5a}, 128)
	binary.BigEndian.PutUint64(wrapped, seed)
	dk, err := envelope.NewDataKey(keyID, 1, secret.New(bytes.Repeat([]byte{3}, envelope.DEKSize)), wrapped)
	must(t, "NewDataKey", err)
	ct, err := dk.Seal([]byte("forged"), nil)
	must(t, "Seal", err)
	return ct
}

// TestBackendBudgetEndToEnd runs a central process with a small
// backend_budget: 1,000 copies of one forged backend-mode data key cost
// one backend call; 1,000 distinct ones are cut off by the client's budget
// (ResourceExhausted, audited, counted on /metrics) while an admin is
// still served.
func TestBackendBudgetEndToEnd(t *testing.T) {
	c := framework.NewSetup(t)
	cfg, err := os.ReadFile(c.Config)
	must(t, "reading central.yaml", err)
	must(t, "writing central.yaml", os.WriteFile(c.Config, append(cfg, "backend_budget: {rate: 1, burst: 5}\n"...), 0o600))
	p := c.StartCentral(t)
	ctx := t.Context()
	admin := c.Dial(t, p.Addr, identity.Admin, "ops")
	app := c.Dial(t, p.Addr, identity.Client, "app")
	_, err = admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "hsm", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_BACKEND, Labels: map[string]string{"owner": framework.TrustDomain}})
	must(t, "CreateKey", err)
	unwraps := func() float64 {
		return c.MetricAt(t, p.OpsAddr, "keybroker_backend_calls_total", `op="unwrap-data-key"`)
	}
	batch := func(cts [][]byte) map[codes.Code]int {
		req := &kbv1.BatchDecryptRequest{}
		for _, ct := range cts {
			req.Items = append(req.Items, &kbv1.DecryptRequest{Ciphertext: ct})
		}
		resp, err := app.KB.BatchDecrypt(ctx, req)
		must(t, "BatchDecrypt", err)
		out := map[codes.Code]int{}
		for _, r := range resp.GetResults() {
			out[codes.Code(r.GetError().GetCode())]++
		}
		return out
	}

	start := time.Now()
	same := make([][]byte, 1000)
	for i := range same {
		same[i] = forgedCiphertext(t, "hsm", 1)
	}
	before := unwraps()
	if got := batch(same); got[codes.InvalidArgument] != 1000 {
		t.Errorf("BatchDecrypt of 1,000 copies of a forged data key: %v, want 1000 InvalidArgument", got)
	}
	if n := unwraps() - before; n > 1 {
		t.Errorf("1,000 copies of a forged data key cost %v backend unwraps, want at most 1", n)
	}

	distinct := make([][]byte, 1000)
	for i := range distinct {
		distinct[i] = forgedCiphertext(t, "hsm", uint64(i)+2)
	}
	before = unwraps()
	got := batch(distinct)
	// The bucket holds 5 and refills at 1 a second: at most 5 plus the
	// seconds gone by, and one more for the rounding.
	allowed := 5 + int(time.Since(start).Seconds()) + 1
	if got[codes.InvalidArgument] > allowed || got[codes.ResourceExhausted] < 1000-allowed || got[codes.InvalidArgument]+got[codes.ResourceExhausted] != 1000 {
		t.Errorf("BatchDecrypt of 1,000 distinct forged data keys: %v, want at most %d InvalidArgument, the rest ResourceExhausted", got, allowed)
	}
	if n := unwraps() - before; n > float64(allowed) {
		t.Errorf("1,000 distinct forged data keys cost %v backend unwraps, want at most %d", n, allowed)
	}
	refused := c.MetricAt(t, p.OpsAddr, "keybroker_backend_budget_refusals_total", `op="unwrap-data-key"`)
	if int(refused) != got[codes.ResourceExhausted] {
		t.Errorf("keybroker_backend_budget_refusals_total = %v, want %d", refused, got[codes.ResourceExhausted])
	}
	audited := c.AuditRecords(t, func(r audit.Record) bool {
		return r.Principal == app.ID && r.Outcome == "ResourceExhausted" && strings.Contains(r.Detail, "budget")
	})
	if len(audited) != got[codes.ResourceExhausted] {
		t.Errorf("audited refusals = %d, want %d", len(audited), got[codes.ResourceExhausted])
	}

	enc, err := admin.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("still served")})
	must(t, "Encrypt by an admin", err)
	dec, err := admin.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
	if err != nil || string(dec.GetPlaintext()) != "still served" {
		t.Errorf("Decrypt by an admin = %v, %v", dec, err)
	}
}
