package e2e

// The central tier as a cluster (TestFaultCluster*): three `keybroker
// central` processes on a three-member etcd cluster (framework.Tier), two
// edges that know every central (each its own order, so that they spread),
// and SDK clients configured with every edge and every central. Each case
// injects one fault of the tier — a central killed, the etcd leader killed,
// a central cut off from etcd, a central killed under concurrent admin
// writes, the elected scheduler killed while rotations are due — and counts
// what the application lost, which must be nothing.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

var (
	clusterOwner               = map[string]string{"owner": framework.TrustDomain}
	clusterAES                 = kbv1.KeyType_KEY_TYPE_AES_256_GCM
	clusterDerive, clusterWrap = kbv1.KeyMode_KEY_MODE_DERIVE, kbv1.KeyMode_KEY_MODE_WRAP
	clusterBackend             = kbv1.KeyMode_KEY_MODE_BACKEND
)

// clusterEdges are the two edges of the cluster cases: neither prefetches,
// so that the first use of a key version at an edge is a miss it fetches
// from the central it follows.
func clusterEdges() []*framework.EdgeNode {
	return []*framework.EdgeNode{
		{Name: "edge-eu", Region: "eu", Staleness: time.Hour},
		{Name: "edge-us", Region: "us", Staleness: time.Hour},
	}
}

// directAt is an SDK client as client/app that always tries the edge
// first, then the other nodes: its calls exercise the edge's misses and
// forwards, and fail over when the edge cannot serve.
func directAt(t *testing.T, c *framework.Tier, edge, region string) *client.Client {
	t.Helper()
	addrs := []string{c.Edges[edge].Proc.Addr}
	for _, a := range append(c.EdgeAddrs(), c.CentralAddrs()...) {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return c.SDKClientWith(t, client.Config{Addrs: addrs, Region: region, Direct: true, MaxAttempts: 20})
}

// logTime is the time of the first log line msg from index from on, as
// the process stamped it.
func logTime(t *testing.T, p *framework.Proc, from int, msg string) time.Time {
	t.Helper()
	rec := framework.LogWithin(t, p, from, msg)
	s, _ := rec["time"].(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("log line %q without a time: %v", msg, rec)
	}
	return ts
}

// TestFaultClusterCentralSIGKILL kills one of three centrals (SIGKILL)
// under mixed load through the SDK: encrypt and decrypt at both edges,
// cold misses (each worker encrypts under keys the edges have never
// fetched, which the admin worker keeps rotating), Sign with a backend-mode
// key (which an edge forwards to the central tier), and admin calls
// (CreateKey, RotateKey, DescribeKey through the SDK's admin client).
// No error may reach a client; the edges that followed the killed central
// must follow another, and the time from the kill to the last of them
// resynchronised elsewhere is the case's figure.
func TestFaultClusterCentralSIGKILL(t *testing.T) {
	rep := framework.NewFaultReport(t, "cluster-central-sigkill")
	c := framework.StartTier(t, framework.TierOptions{Edges: clusterEdges()})
	ctx := t.Context()
	admin := c.SDK(t, identity.Admin, "ops", "", 20)
	adm, err := admin.Admin()
	must(t, "Admin", err)
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "hot-derive", Type: clusterAES, Mode: clusterDerive, Labels: clusterOwner, Placement: "true"},
		{KeyId: "hot-wrap", Type: clusterAES, Mode: clusterWrap, Labels: clusterOwner, Placement: "true"},
		{KeyId: "signer", Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: clusterBackend, RootKey: c.Roots.Ref("root-ec"), Labels: clusterOwner},
	} {
		m, err := adm.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	const coldKeys = 8
	for i := range coldKeys {
		m, err := adm.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: fmt.Sprintf("cold-%d", i), Type: clusterAES, Mode: clusterWrap, Labels: clusterOwner, Placement: "true"})
		must(t, "CreateKey cold", err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)

	sdk := map[string]*client.Client{"edge-eu": directAt(t, c, "edge-eu", "eu"), "edge-us": directAt(t, c, "edge-us", "us")}
	edges := []string{"edge-eu", "edge-us"}
	var kinds [5]atomic.Int64 // crypto, cold, sign, admin, describe
	roundTrip := func(ctx context.Context, cl *client.Client, key string, msg []byte) error {
		ct, err := cl.Encrypt(ctx, key, msg, map[string]string{"case": "kill"})
		if err != nil {
			return fmt.Errorf("Encrypt %s: %w", key, err)
		}
		pt, err := cl.Decrypt(ctx, ct.Ciphertext, map[string]string{"case": "kill"})
		if err != nil {
			return fmt.Errorf("Decrypt %s: %w", key, err)
		}
		if !bytes.Equal(pt.Plaintext, msg) {
			return fmt.Errorf("Decrypt %s: %q, want %q", key, pt.Plaintext, msg)
		}
		return nil
	}
	var (
		created, lagging atomic.Int64
		mu               sync.Mutex
		rotated          = map[string]uint32{} // admin keys by the version RotateKey acknowledged
	)
	load := framework.StartLoad(ctx, 7, func(ctx context.Context, w, i int) error {
		msg := fmt.Appendf(nil, "w%d-%d", w, i)
		switch w {
		case 0, 1, 2, 3: // hot keys, and every fourth call a cold one
			cl := sdk[edges[w%2]]
			if i%4 == 3 {
				kinds[1].Add(1)
				return roundTrip(ctx, cl, fmt.Sprintf("cold-%d", (w*7+i)%coldKeys), msg)
			}
			kinds[0].Add(1)
			return roundTrip(ctx, cl, []string{"hot-derive", "hot-wrap"}[i%2], msg)
		case 4: // backend mode: forwarded by the edge to the central tier
			kinds[2].Add(1)
			cl := sdk[edges[i%2]]
			sig, err := cl.Sign(ctx, "signer", msg)
			if err != nil {
				return fmt.Errorf("Sign: %w", err)
			}
			ok, err := cl.Verify(ctx, "signer", sig.Version, msg, sig.Signature)
			if err != nil || !ok {
				return fmt.Errorf("Verify: %v, %w", ok, err)
			}
			return nil
		case 5: // admin: a new key, rotated, described
			kinds[3].Add(1)
			id := fmt.Sprintf("adm-%d", i)
			if _, err := adm.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: clusterAES, Mode: clusterDerive, Labels: clusterOwner}); err != nil {
				return fmt.Errorf("CreateKey %s: %w", id, err)
			}
			created.Add(1)
			m, err := adm.RotateKey(ctx, &kbv1.KeyRequest{KeyId: id})
			if err != nil {
				return fmt.Errorf("RotateKey %s: %w", id, err)
			}
			d, err := admin.DescribeKey(ctx, id)
			if err != nil {
				return fmt.Errorf("DescribeKey %s: %w", id, err)
			}
			// The node DescribeKey reached (an edge, another central)
			// follows the store's feed and may not have seen the rotation
			// yet: the tier promises no read-your-writes across nodes.
			// Counted, and every rotation checked once the load is over.
			if d.GetPrimaryVersion() < m.GetPrimaryVersion() {
				lagging.Add(1)
			}
			mu.Lock()
			rotated[id] = m.GetPrimaryVersion()
			mu.Unlock()
			return nil
		default: // the cold keys get new versions the edges have not fetched
			kinds[4].Add(1)
			_, err := adm.RotateKey(ctx, &kbv1.KeyRequest{KeyId: fmt.Sprintf("cold-%d", i%coldKeys)})
			return err
		}
	})
	load.WaitOps(t, 200)

	// Kill the central edge-eu follows, with whichever edges follow it.
	before := c.Following(t)
	victim := c.Central(t, before["edge-eu"])
	var moved []string
	marks := map[string]int{}
	for _, name := range edges {
		if before[name] == victim.Name {
			moved = append(moved, name)
			marks[name] = c.Edges[name].Proc.Mark()
		}
	}
	atKill := load.Ops.Load()
	killed := time.Now()
	victim.Kill()

	// Each of its edges follows another live central.
	framework.Poll(t, "the killed central's edges following another", func() (bool, string) {
		now := c.Following(t)
		for _, name := range moved {
			if now[name] == "" || now[name] == victim.Name {
				return false, fmt.Sprintf("following %v", now)
			}
		}
		return true, ""
	})
	var last time.Duration
	for _, name := range moved {
		p := c.Edges[name].Proc
		// It lost the killed central's stream, then followed another.
		framework.LogWithin(t, p, marks[name], "lost the central tier; reconnecting")
		last = max(last, logTime(t, p, marks[name], "following the central tier").Sub(killed))
	}
	load.WaitOps(t, atKill+200)
	first := load.Stop()
	after := c.Following(t)
	t.Logf("before the kill %v; after %v; ops %d (crypto %d, cold %d, sign %d, admin %d, rotate %d)", before, after, load.Ops.Load(),
		kinds[0].Load(), kinds[1].Load(), kinds[2].Load(), kinds[3].Load(), kinds[4].Load())
	if n := load.Errs.Load(); n != 0 {
		t.Errorf("%d of %d operations failed across the kill of %s; first: %v", n, load.Ops.Load(), victim.Name, first)
	}
	// The load did reach the central tier from the edges: misses fetched
	// and backend-mode calls forwarded.
	var fetches, forwards float64
	for _, name := range edges {
		fetches += c.MetricAt(t, c.Edges[name].Proc.OpsAddr, "keybroker_edge_fetches_total", "")
		forwards += c.MetricAt(t, c.Edges[name].Proc.OpsAddr, "keybroker_edge_forwards_total", "")
	}
	if fetches == 0 || forwards == 0 {
		t.Errorf("the edges fetched %v key versions and forwarded %v calls; the load was to make both", fetches, forwards)
	}

	// Every acknowledged rotation is at every live central.
	for _, cn := range c.Live() {
		at := c.AdminAt(t, cn)
		framework.Poll(t, "every acknowledged rotation at "+cn.Name, func() (bool, string) {
			for id, v := range rotated {
				d, err := at.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id})
				if err != nil || d.GetKey().GetPrimaryVersion() < v {
					return false, fmt.Sprintf("%s: %v, %v; want primary >= %d", id, d.GetKey().GetPrimaryVersion(), err, v)
				}
			}
			return true, ""
		})
	}
	t.Logf("%d DescribeKey calls right after RotateKey saw the version before it (a node that had not followed the change yet)", lagging.Load())
	rep.Set("killed %s (followed by %v) under %d mixed SDK operations (crypto %d, cold misses %d, backend-mode Sign %d, admin %d+%d; the edges fetched %v versions and forwarded %v calls); %d errors; last edge resynchronised at another central %v after the kill (lease 2s)",
		victim.Name, moved, load.Ops.Load(), kinds[0].Load(), kinds[1].Load(), kinds[2].Load(), kinds[3].Load(), kinds[4].Load(), fetches, forwards, load.Errs.Load(), last.Round(time.Millisecond))
}

// clusterKey is what the admin writers were told of one key.
type clusterKey struct {
	maxAck uint32          // the highest version RotateKey acknowledged
	labels map[string]bool // labels an acknowledged UpdateKey added
}

// TestFaultClusterAdminWritesSIGKILL makes 1,000 concurrent admin writes —
// CreateKey, RotateKey and UpdateKey (a new label each), every seventh a
// create and the others on keys already made — over three centrals, from
// SDK admin clients each configured with the centrals in its own order, so
// that the writes spread and centrals race on one key; one central is
// killed (SIGKILL) half way. Each acknowledged rotation is followed by an
// encryption under the key. Afterwards, with the killed central restarted,
// the registry must be the same at every central and consistent: every
// key's versions 1..n contiguous with n its primary, every acknowledged
// create, rotation and update present — and every ciphertext must decrypt
// at every central and every edge.
func TestFaultClusterAdminWritesSIGKILL(t *testing.T) {
	rep := framework.NewFaultReport(t, "cluster-admin-writes-sigkill")
	c := framework.StartTier(t, framework.TierOptions{Edges: clusterEdges()})
	ctx := t.Context()
	const workers, total = 12, 1000
	addrs := c.CentralAddrs()
	admins := make([]kbv1.KeyAdminClient, workers)
	for w := range admins {
		k := w % len(addrs)
		cl := c.SDKWith(t, identity.Admin, "ops", client.Config{Addrs: slices.Concat(addrs[k:], addrs[:k]), MaxAttempts: 20})
		adm, err := cl.Admin()
		must(t, "Admin", err)
		admins[w] = adm
	}
	app := c.SDK(t, identity.Client, "app", "", 20)

	var (
		mu      sync.Mutex
		keys    = map[string]*clusterKey{} // acknowledged creates
		made    []string
		msgs    faultMsgs
		next    atomic.Int64
		acks    atomic.Int64
		errs    atomic.Int64
		firstMu sync.Mutex
		first   []error
		kinds   [3]atomic.Int64
		rotAcks atomic.Int64
	)
	fail := func(err error) {
		errs.Add(1)
		firstMu.Lock()
		if len(first) < 5 {
			first = append(first, err)
		}
		firstMu.Unlock()
	}
	victim := c.Centrals[1]
	killed := make(chan struct{})
	started := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			adm := admins[w]
			for {
				i := int(next.Add(1) - 1)
				if i >= total || ctx.Err() != nil {
					return
				}
				mu.Lock()
				n := len(made)
				var id string
				if n > 0 {
					id = made[(i*7919)%n]
				}
				mu.Unlock()
				switch {
				case i%7 == 0 || n == 0:
					kinds[0].Add(1)
					id := fmt.Sprintf("w-%04d", i)
					if _, err := adm.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: clusterAES, Mode: []kbv1.KeyMode{clusterDerive, clusterWrap}[i%2],
						Labels: clusterOwner, Placement: "true"}); err != nil {
						fail(fmt.Errorf("CreateKey %s: %w", id, err))
						continue
					}
					mu.Lock()
					keys[id] = &clusterKey{maxAck: 1, labels: map[string]bool{}}
					made = append(made, id)
					mu.Unlock()
				case i%2 == 0:
					kinds[1].Add(1)
					m, err := adm.RotateKey(ctx, &kbv1.KeyRequest{KeyId: id})
					if err != nil {
						fail(fmt.Errorf("RotateKey %s: %w", id, err))
						continue
					}
					rotAcks.Add(1)
					mu.Lock()
					keys[id].maxAck = max(keys[id].maxAck, m.GetPrimaryVersion())
					mu.Unlock()
					msg := faultMsg{key: id, plaintext: fmt.Appendf(nil, "after rotation %d of %s", m.GetPrimaryVersion(), id), ectx: map[string]string{"i": fmt.Sprint(i)}}
					ct, err := app.Encrypt(ctx, id, msg.plaintext, msg.ectx)
					if err != nil {
						var e *client.Error
						if errors.As(err, &e) {
							err = fmt.Errorf("at %s after %d attempts: %w", c.NodeName(e.Node), e.Attempts, err)
						}
						fail(fmt.Errorf("Encrypt %s after rotation: %w", id, err))
						continue
					}
					msg.ciphertext = ct.Ciphertext
					msgs.add(msg)
				default:
					kinds[2].Add(1)
					label := fmt.Sprintf("u%04d", i)
					if _, err := adm.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: id, Labels: map[string]string{label: "1"}}); err != nil {
						fail(fmt.Errorf("UpdateKey %s: %w", id, err))
						continue
					}
					mu.Lock()
					keys[id].labels[label] = true
					mu.Unlock()
				}
				if acks.Add(1) == total/2 {
					victim.Kill()
					close(killed)
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-killed:
	default:
		t.Fatalf("the writers finished (%d acknowledged) before %s was killed", acks.Load(), victim.Name)
	}
	if n := errs.Load(); n != 0 {
		t.Errorf("%d of %d admin writes failed across the kill of %s; first: %v", n, total, victim.Name, first)
	}
	t.Logf("writes done %v after the start", time.Since(started).Round(time.Millisecond))
	c.Restart(t, victim)

	// Every central lists the same registry, with every acknowledged write.
	listing := func(cn *framework.TierCentral) (map[string]*kbv1.KeyMetadata, error) {
		resp, err := c.AdminAt(t, cn).KB.ListKeys(ctx, &kbv1.ListKeysRequest{PageSize: 1000})
		if err != nil {
			return nil, err
		}
		if resp.GetNextPageToken() != "" {
			return nil, errors.New("more than one page")
		}
		out := map[string]*kbv1.KeyMetadata{}
		for _, k := range resp.GetKeys() {
			out[k.GetKeyId()] = k
		}
		return out, nil
	}
	var want map[string]*kbv1.KeyMetadata
	framework.Poll(t, "the same registry at every central", func() (bool, string) {
		var lists []map[string]*kbv1.KeyMetadata
		for _, cn := range c.Centrals {
			l, err := listing(cn)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", cn.Name, err)
			}
			lists = append(lists, l)
		}
		for i, l := range lists[1:] {
			for id, k := range lists[0] {
				if l[id].GetRevision() != k.GetRevision() {
					return false, fmt.Sprintf("%s at %s: revision %d, at %s: %d", id, c.Centrals[0].Name, k.GetRevision(), c.Centrals[i+1].Name, l[id].GetRevision())
				}
			}
			if len(l) != len(lists[0]) {
				return false, fmt.Sprintf("%d keys at %s, %d at %s", len(lists[0]), c.Centrals[0].Name, len(l), c.Centrals[i+1].Name)
			}
		}
		want = lists[0]
		return true, ""
	})
	var rev uint64
	versions := 0
	for id, ack := range keys {
		k := want[id]
		if k == nil {
			t.Errorf("%s: acknowledged CreateKey, not in the registry", id)
			continue
		}
		rev = max(rev, k.GetRevision())
		versions += len(k.GetVersions())
		for i, v := range k.GetVersions() {
			if v.GetVersion() != uint32(i+1) {
				t.Errorf("%s: versions %v, want 1..%d contiguous", id, k.GetVersions(), len(k.GetVersions()))
				break
			}
		}
		if p := k.GetPrimaryVersion(); p != uint32(len(k.GetVersions())) || p < ack.maxAck {
			t.Errorf("%s: primary %d of %d versions; RotateKey acknowledged version %d", id, p, len(k.GetVersions()), ack.maxAck)
		}
		for l := range ack.labels {
			if k.GetLabels()[l] != "1" {
				t.Errorf("%s: acknowledged UpdateKey label %s lost (labels %v)", id, l, k.GetLabels())
			}
		}
	}
	for id := range want {
		if _, ok := keys[id]; !ok && strings.HasPrefix(id, "w-") {
			// A create whose answer was lost with the killed central
			// may still have taken effect; the SDK retried it, so
			// every create is acknowledged.
			t.Errorf("%s is in the registry but no CreateKey for it was acknowledged", id)
		}
	}

	// Every ciphertext opens at every central and every edge.
	t.Logf("registry checked %v after the start", time.Since(started).Round(time.Millisecond))
	c.WaitApplied(t, rev)
	all := msgs.all()
	var decryptErrs []error
	nodes := append(c.CentralAddrs(), c.EdgeAddrs()...)
	for _, addr := range nodes {
		for _, err := range faultDecryptAll(ctx, c.Dial(t, addr, identity.Client, "app"), all) {
			decryptErrs = append(decryptErrs, fmt.Errorf("at %s: %w", addr, err))
		}
	}
	if len(decryptErrs) > 0 {
		t.Errorf("%d decryptions failed; first: %v", len(decryptErrs), decryptErrs[:min(5, len(decryptErrs))])
	}
	t.Logf("decryptions done %v after the start", time.Since(started).Round(time.Millisecond))
	// A rotation the SDK retried after its central died may have
	// committed twice: at least once is what Admin promises.
	extra := versions - len(keys) - int(rotAcks.Load())
	rep.Set("%d concurrent admin writes over 3 centrals (creates %d, rotations %d, updates %d), %s killed after %d: %d errors; %d keys, %d versions consistent at every central (%d beyond the acknowledged rotations); %d ciphertexts decrypted at %d nodes, %d failures",
		total, kinds[0].Load(), kinds[1].Load(), kinds[2].Load(), victim.Name, total/2, errs.Load(), len(keys), versions, extra, len(all), len(nodes), len(decryptErrs))
}

// TestFaultClusterEtcdLeaderSIGKILL kills the etcd member that leads
// (SIGKILL) while SDK clients encrypt and decrypt at the edges, read keys
// at the centrals, and write — CreateKey and UpdateKey through the SDK's
// admin client. Reads and crypto must carry on with no error; a write
// during the election either succeeds or fails retryably and the SDK's
// retry makes it succeed, so no write fails either; and every
// acknowledged write must be at every central afterwards. The longest
// write during the election is the case's figure.
func TestFaultClusterEtcdLeaderSIGKILL(t *testing.T) {
	rep := framework.NewFaultReport(t, "cluster-etcd-leader-sigkill")
	c := framework.StartTier(t, framework.TierOptions{Edges: clusterEdges()})
	ctx := t.Context()
	admin := c.SDK(t, identity.Admin, "ops", "", 20)
	adm, err := admin.Admin()
	must(t, "Admin", err)
	var rev uint64
	for _, id := range []string{"hot-derive", "hot-wrap"} {
		m, err := adm.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: clusterAES, Mode: map[string]kbv1.KeyMode{"hot-derive": clusterDerive, "hot-wrap": clusterWrap}[id],
			Labels: clusterOwner, Placement: "true"})
		must(t, "CreateKey", err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)
	sdk := map[string]*client.Client{"edge-eu": directAt(t, c, "edge-eu", "eu"), "edge-us": directAt(t, c, "edge-us", "us")}
	edges := []string{"edge-eu", "edge-us"}
	readers := make([]*framework.Conn, len(c.Centrals))
	for i, cn := range c.Centrals {
		readers[i] = c.Dial(t, cn.Addr, identity.Client, "app")
	}

	var (
		mu       sync.Mutex
		created  []string
		updated  = map[string]string{} // hot-wrap's labels: the value an acknowledged UpdateKey set last
		slowest  time.Duration
		writes   atomic.Int64
		killedAt atomic.Pointer[time.Time]
	)
	// Four writers, so that writes are in flight at every central when
	// the leader dies.
	load := framework.StartLoad(ctx, 8, func(ctx context.Context, w, i int) error {
		msg := fmt.Appendf(nil, "w%d-%d", w, i)
		switch w {
		case 0, 1: // crypto at the edges
			cl := sdk[edges[w]]
			key := []string{"hot-derive", "hot-wrap"}[i%2]
			ct, err := cl.Encrypt(ctx, key, msg, nil)
			if err != nil {
				return fmt.Errorf("Encrypt: %w", err)
			}
			pt, err := cl.Decrypt(ctx, ct.Ciphertext, nil)
			if err != nil || !bytes.Equal(pt.Plaintext, msg) {
				return fmt.Errorf("Decrypt: %v, %w", pt, err)
			}
			return nil
		case 2, 3: // reads at each central in turn, straight from its registry
			r := readers[(w+i)%len(readers)]
			if _, err := r.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "hot-wrap"}); err != nil {
				return fmt.Errorf("DescribeKey: %w", err)
			}
			_, err := r.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hot-derive", Plaintext: msg})
			return err
		default: // writes
			start := time.Now()
			defer func() {
				if k := killedAt.Load(); k != nil && start.After(k.Add(-time.Second)) {
					mu.Lock()
					slowest = max(slowest, time.Since(start))
					mu.Unlock()
				}
			}()
			writes.Add(1)
			if w%2 == 0 {
				id := fmt.Sprintf("e-%d-%d", w, i)
				if _, err := adm.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: clusterAES, Mode: clusterDerive, Labels: clusterOwner}); err != nil {
					return fmt.Errorf("CreateKey %s: %w", id, err)
				}
				mu.Lock()
				created = append(created, id)
				mu.Unlock()
				return nil
			}
			label, v := fmt.Sprintf("n%d", w), fmt.Sprint(i)
			if _, err := adm.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "hot-wrap", Labels: map[string]string{label: v}}); err != nil {
				return fmt.Errorf("UpdateKey: %w", err)
			}
			mu.Lock()
			updated[label] = v
			mu.Unlock()
			return nil
		}
	})
	load.WaitOps(t, 200)
	leader := c.EtcdLeader(t)
	now := time.Now()
	killedAt.Store(&now)
	leader.Kill()
	atKill := writes.Load()
	// A new leader is elected among the two members left.
	next := c.EtcdLeader(t)
	framework.Poll(t, "writes after the election", func() (bool, string) {
		return writes.Load() >= atKill+50, fmt.Sprintf("%d writes since the kill", writes.Load()-atKill)
	})
	first := load.Stop()
	if n := load.Errs.Load(); n != 0 {
		t.Errorf("%d of %d operations failed across the etcd leader's kill; first: %v", n, load.Ops.Load(), first)
		logFailures(t, c)
	}
	// Every acknowledged write is at every central.
	for _, cn := range c.Centrals {
		at := c.AdminAt(t, cn)
		framework.Poll(t, "every acknowledged write at "+cn.Name, func() (bool, string) {
			for _, id := range created {
				if _, err := at.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id}); err != nil {
					return false, fmt.Sprintf("%s: %v", id, err)
				}
			}
			d, err := at.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "hot-wrap"})
			if err != nil {
				return false, err.Error()
			}
			for label, v := range updated {
				if d.GetKey().GetLabels()[label] != v {
					return false, fmt.Sprintf("hot-wrap labels %v; want %s=%s, the last acknowledged", d.GetKey().GetLabels(), label, v)
				}
			}
			return true, ""
		})
	}
	rep.Set("killed etcd leader %s (%s leads after) under %d SDK operations: %d errors; %d creates and %d label updates acknowledged, the last of each writer's present at every central; longest write around the election %v",
		leader.Name, next.Name, load.Ops.Load(), load.Errs.Load(), len(created), writes.Load()-int64(len(created)), slowest.Round(time.Millisecond))
}

// clusterStaleness is the cut-off central's store.etcd.max_staleness in
// TestFaultClusterCentralCutFromEtcd, and clusterRequestTimeout its
// store.etcd.request_timeout.
const clusterStaleness, clusterRequestTimeout = "3s", "1s"

// TestFaultClusterCentralCutFromEtcd cuts one central off from etcd (every
// connection through its EtcdLink reset, new ones refused) while SDK
// clients that try it first encrypt, decrypt and update a key. The cut-off
// central must refuse writes at once with Unavailable and, once its
// max_staleness has passed, refuse to serve keys from its registry with
// Unavailable — fail-closed, like an edge — while the other centrals
// serve, so that no SDK call fails. A key changed meanwhile at another
// central must be seen at the cut-off one once the link heals, and it must
// serve again.
func TestFaultClusterCentralCutFromEtcd(t *testing.T) {
	c := framework.NewTier(t, framework.TierOptions{Linked: []int{2},
		EtcdFor: map[int]string{2: "max_staleness: " + clusterStaleness + "\nrequest_timeout: " + clusterRequestTimeout}})
	cut := c.Centrals[2]
	if _, err := config.LoadCentral(cut.Config); err != nil {
		t.Fatalf("%s: %v", cut.Config, err)
	}
	rep := framework.NewFaultReport(t, "cluster-central-cut-from-etcd")
	c.Start(t)
	ctx := t.Context()
	others := c.Centrals[:2]
	adminFirst := c.AdminAt(t, others[0])
	_, err := adminFirst.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "k", Type: clusterAES, Mode: clusterWrap, Labels: clusterOwner})
	must(t, "CreateKey", err)
	atCut := c.Dial(t, cut.Addr, identity.Client, "app")
	adminCut := c.AdminAt(t, cut)
	var before *kbv1.EncryptResponse
	framework.Poll(t, "the key at "+cut.Name, func() (bool, string) {
		before, err = atCut.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("before the cut")})
		return err == nil, fmt.Sprint(err)
	})

	// SDK clients that try the cut-off central first, then the others.
	order := []string{cut.Addr, others[0].Addr, others[1].Addr}
	app := c.SDKWith(t, identity.Client, "app", client.Config{Addrs: order, Direct: true, MaxAttempts: 20})
	adminCl := c.SDKWith(t, identity.Admin, "ops", client.Config{Addrs: order, MaxAttempts: 20})
	adm, err := adminCl.Admin()
	must(t, "Admin", err)
	load := framework.StartLoad(ctx, 3, func(ctx context.Context, w, i int) error {
		msg := fmt.Appendf(nil, "w%d-%d", w, i)
		if w == 2 {
			if i%10 != 0 { // writes at a gentler pace
				return nil
			}
			_, err := adm.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "k", Labels: map[string]string{"w": fmt.Sprint(i)}})
			return err
		}
		ct, err := app.Encrypt(ctx, "k", msg, nil)
		if err != nil {
			return fmt.Errorf("Encrypt: %w", err)
		}
		pt, err := app.Decrypt(ctx, ct.Ciphertext, nil)
		if err != nil || !bytes.Equal(pt.Plaintext, msg) {
			return fmt.Errorf("Decrypt: %v, %w", pt, err)
		}
		return nil
	})
	load.WaitOps(t, 50)

	cutAt := time.Now()
	cut.Link.Cut()
	// Writes are refused at once: Unavailable, well before any deadline.
	if err := framework.FailsFast(ctx, func(ctx context.Context) error {
		_, err := adminCut.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "during-cut", Type: clusterAES, Mode: clusterDerive})
		return err
	}); err != nil {
		t.Errorf("CreateKey at %s cut off from etcd: %v", cut.Name, err)
	}
	if err := framework.FailsFast(ctx, func(ctx context.Context) error {
		_, err := adminCut.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "k"})
		return err
	}); err != nil {
		t.Errorf("RotateKey at %s cut off from etcd: %v", cut.Name, err)
	}
	// Past its max_staleness it stops serving its registry.
	var staleAfter time.Duration
	framework.Poll(t, cut.Name+" refusing keys once stale", func() (bool, string) {
		_, err := atCut.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("x")})
		if status.Code(err) != codes.Unavailable {
			return false, fmt.Sprintf("Encrypt: %v", err)
		}
		_, err = atCut.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: before.GetCiphertext()})
		if status.Code(err) != codes.Unavailable {
			return false, fmt.Sprintf("Decrypt: %v", err)
		}
		staleAfter = time.Since(cutAt)
		return true, ""
	})
	// The others serve, and a change made at one of them now...
	for _, cn := range others {
		if _, err := c.Dial(t, cn.Addr, identity.Client, "app").KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("x")}); err != nil {
			t.Errorf("Encrypt at %s while %s is cut off: %v", cn.Name, cut.Name, err)
		}
	}
	rotated, err := adminFirst.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "k"})
	must(t, "RotateKey at "+others[0].Name, err)
	_, err = adminFirst.Admin.UpdateKey(ctx, &kbv1.UpdateKeyRequest{KeyId: "k", Labels: map[string]string{"changed": "during-cut"}})
	must(t, "UpdateKey at "+others[0].Name, err)
	load.WaitOps(t, load.Ops.Load()+50)

	// ...is seen at the cut-off central once it heals, which serves again.
	cut.Link.Heal()
	healed := time.Now()
	framework.Poll(t, cut.Name+" caught up and serving", func() (bool, string) {
		d, err := adminCut.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "k"})
		if err != nil || d.GetKey().GetPrimaryVersion() != rotated.GetPrimaryVersion() || d.GetKey().GetLabels()["changed"] != "during-cut" {
			return false, fmt.Sprintf("DescribeKey: %v, %v", d.GetKey(), err)
		}
		e, err := atCut.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "k", Plaintext: []byte("x")})
		if err != nil || e.GetKeyVersion() != rotated.GetPrimaryVersion() {
			return false, fmt.Sprintf("Encrypt: version %d, %v", e.GetKeyVersion(), err)
		}
		return true, ""
	})
	caughtUp := time.Since(healed)
	if d, err := atCut.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: before.GetCiphertext()}); err != nil || string(d.GetPlaintext()) != "before the cut" {
		t.Errorf("Decrypt at %s after healing: %q, %v", cut.Name, d.GetPlaintext(), err)
	}
	first := load.Stop()
	if n := load.Errs.Load(); n != 0 {
		t.Errorf("%d of %d SDK operations failed while %s was cut off; first: %v", n, load.Ops.Load(), cut.Name, first)
	}
	rep.Set("%s cut off from etcd (max_staleness %s): writes refused Unavailable at once, keys refused Unavailable %v after the cut, the others served; caught up %v after healing; %d SDK operations trying it first, %d errors",
		cut.Name, clusterStaleness, staleAfter.Round(time.Millisecond), caughtUp.Round(time.Millisecond), load.Ops.Load(), load.Errs.Load())
}

// TestFaultClusterSchedulerSIGKILL makes keys with a rotation period due
// (their next rotation moved into the past in etcd, as if the period had
// run out) and kills the central elected to sweep (SIGKILL) at once, so
// that the rotation falls due across the leader change. Another central
// must be elected and rotate each key exactly once for the one elapsed
// period: one version more, the next rotation a period ahead, the same at
// every central — the killed one too, once restarted.
//
// A new leader sweeps central.SweepInterval after its election (a minute),
// and is elected once the killed one's session lease (store.LeaseTTL) has
// run out: this case takes over a minute.
func TestFaultClusterSchedulerSIGKILL(t *testing.T) {
	rep := framework.NewFaultReport(t, "cluster-scheduler-sigkill")
	c := framework.StartTier(t, framework.TierOptions{})
	ctx := t.Context()
	admin := c.Admin(t)
	const period = 24 * time.Hour
	ids := make([]string, 6)
	for i := range ids {
		ids[i] = fmt.Sprintf("sched-%d", i)
		_, err := admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: ids[i], Type: clusterAES, Mode: []kbv1.KeyMode{clusterDerive, clusterWrap}[i%2],
			Labels: clusterOwner, RotationPeriod: durationpb.New(period)})
		must(t, "CreateKey", err)
	}
	var leader string
	framework.Poll(t, "a sweep leader", func() (bool, string) {
		leader = c.SweepLeader(t)
		return leader != "", "no election key"
	})
	old := c.Central(t, leader)
	c.MakeDue(t, ids...)
	old.Kill()
	killed := time.Now()

	wait := central.SweepInterval + store.LeaseTTL + framework.FaultWait
	framework.PollFor(t, "every due key rotated at every live central", wait, func() (bool, string) {
		for _, cn := range c.Live() {
			for _, id := range ids {
				d, err := c.AdminAt(t, cn).KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id})
				if err != nil || len(d.GetKey().GetVersions()) < 2 {
					return false, fmt.Sprintf("%s at %s: %v, %v", id, cn.Name, d.GetKey().GetVersions(), err)
				}
			}
		}
		return true, ""
	})
	rotatedAfter := time.Since(killed)
	next := c.SweepLeader(t)
	if next == "" || next == leader {
		t.Errorf("sweep leader after the kill of %s: %q", leader, next)
	}
	c.Restart(t, old)
	for _, cn := range c.Centrals {
		at := c.AdminAt(t, cn)
		framework.Poll(t, "the rotations at "+cn.Name, func() (bool, string) {
			for _, id := range ids {
				d, err := at.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id})
				if err != nil || len(d.GetKey().GetVersions()) < 2 {
					return false, fmt.Sprintf("%s: %v, %v", id, d.GetKey().GetVersions(), err)
				}
			}
			return true, ""
		})
		for _, id := range ids {
			d, err := at.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: id})
			must(t, "DescribeKey", err)
			k := d.GetKey()
			if n := len(k.GetVersions()); n != 2 || k.GetPrimaryVersion() != 2 {
				t.Errorf("%s at %s: %d versions, primary %d; want exactly one rotation for one elapsed period (2, 2)", id, cn.Name, n, k.GetPrimaryVersion())
			}
			if nr := k.GetNextRotation().AsTime(); nr.Before(killed.Add(period - time.Hour)) {
				t.Errorf("%s at %s: next rotation %v, want a period after the rotation", id, cn.Name, nr)
			}
		}
	}
	rep.Set("killed sweep leader %s with %d keys due: %s elected, each key rotated exactly once (%v after the kill, sweep interval %v, lease %v)",
		leader, len(ids), next, rotatedAfter.Round(time.Millisecond), central.SweepInterval, store.LeaseTTL)
}

// logFailures logs the central audit lines of calls that failed other
// than Unavailable: their detail keeps the error text a caller is not
// told.
func logFailures(t *testing.T, c *framework.Tier) {
	t.Helper()
	for _, cn := range c.Centrals {
		for _, r := range c.AuditOf(t, cn, func(r audit.Record) bool {
			return r.Outcome != "ok" && r.Outcome != "Unavailable" && r.Outcome != "PermissionDenied" && r.Outcome != "NotFound"
		}) {
			t.Logf("%s audit: %s %s %s: %s", cn.Name, r.Operation, r.Key, r.Outcome, r.Detail)
		}
		for line := range strings.Lines(cn.Proc.Logs()) {
			if strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, `"level":"WARN"`) {
				t.Logf("%s log: %s", cn.Name, strings.TrimSpace(line))
			}
		}
	}
}
