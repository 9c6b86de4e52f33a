package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// rotationKey is one key of the rotation test, as its worker saw it.
type rotationKey struct {
	id     string
	acked  []uint32 // versions RotateKey acknowledged, in order
	failed int      // RotateKey calls that failed (central was down)
}

// TestFaultCentralSIGKILLRotations issues 1,000 RotateKey calls over eight
// keys (derive and wrap mode), one worker per key, each sealing a message
// under every version it is acknowledged, and kills central (SIGKILL) once
// about half the rotations are acknowledged. Central restarts on the same
// data directory and port and the workers carry on to 1,000. The registry
// must then be consistent — every key's versions contiguous from 1, the
// primary the newest, no acknowledged rotation lost and no version from
// nowhere — and every ciphertext issued, before the kill or after, must
// decrypt at central and at an edge.
func TestFaultCentralSIGKILLRotations(t *testing.T) {
	rep := framework.NewFaultReport(t, "central-sigkill-rotations")
	// The edge joins once the rotations are done: a connected edge is sent
	// the whole key again with each rotation (every version's material,
	// if it prefetches; see docs/reliability.md), which a thousand
	// rotations make slow, not wrong. Central's material cache is the
	// default one, not the one-entry cache of the other edge tests.
	c := framework.NewProcessesOn(t, framework.PKCS11Roots, framework.BasicRoots, "")
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	keys := make([]*rotationKey, 8)
	for i := range keys {
		keys[i] = &rotationKey{id: fmt.Sprintf("rot-%d", i)}
		mode := []kbv1.KeyMode{kbv1.KeyMode_KEY_MODE_DERIVE, kbv1.KeyMode_KEY_MODE_WRAP}[i%2]
		_, err := c.Admin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: keys[i].id, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: mode, Labels: owner, Placement: "true"})
		must(t, "CreateKey", err)
	}

	// Central's connections, replaced when it restarts; epoch is odd
	// while central is down.
	type conns struct{ admin, app *framework.Conn }
	var (
		mu    sync.Mutex
		cur   = conns{c.Admin, c.Dial(t, c.Central.Addr, identity.Client, "app")}
		up    = make(chan struct{})
		epoch atomic.Int64
	)
	close(up)
	current := func() (conns, chan struct{}) {
		mu.Lock()
		defer mu.Unlock()
		return cur, up
	}

	const total = 1000
	var (
		issued, acked atomic.Int64
		before, after faultMsgs
		unexpected    []error
		umu           sync.Mutex
	)
	fail := func(err error) {
		umu.Lock()
		unexpected = append(unexpected, err)
		umu.Unlock()
	}
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Go(func() {
			for n := 0; issued.Add(1) <= total; n++ {
				cn, ready := current()
				select {
				case <-ready:
				case <-ctx.Done():
					return
				}
				cn, _ = current()
				e := epoch.Load()
				// A call made while central is up fails only if central
				// died under it.
				expected := func() bool { return e%2 == 1 || epoch.Load() != e }
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				m, err := cn.admin.Admin.RotateKey(cctx, &kbv1.KeyRequest{KeyId: k.id})
				cancel()
				if err != nil {
					k.failed++
					if !expected() {
						fail(fmt.Errorf("RotateKey %s with central up: %w", k.id, err))
					}
					continue
				}
				v := m.GetPrimaryVersion()
				if len(k.acked) > 0 && v <= k.acked[len(k.acked)-1] {
					fail(fmt.Errorf("RotateKey %s acknowledged version %d after %d", k.id, v, k.acked[len(k.acked)-1]))
				}
				k.acked = append(k.acked, v)
				acked.Add(1)
				msg := faultMsg{key: k.id, plaintext: fmt.Appendf(nil, "%s version %d", k.id, v), ectx: map[string]string{"n": strconv.Itoa(n)}}
				cctx, cancel = context.WithTimeout(ctx, 30*time.Second)
				enc, err := cn.app.KB.Encrypt(cctx, &kbv1.EncryptRequest{KeyId: k.id, Plaintext: msg.plaintext, EncryptionContext: msg.ectx})
				cancel()
				switch {
				case err != nil && !expected():
					fail(fmt.Errorf("Encrypt %s with central up: %w", k.id, err))
				case err != nil: // not issued: central died
				case enc.GetKeyVersion() != v:
					fail(fmt.Errorf("Encrypt %s right after rotating to version %d used version %d", k.id, v, enc.GetKeyVersion()))
				default:
					msg.ciphertext = enc.GetCiphertext()
					if epoch.Load() == 0 {
						before.add(msg)
					} else {
						after.add(msg)
					}
				}
			}
		})
	}
	framework.Poll(t, "500 acknowledged rotations", func() (bool, string) {
		return acked.Load() >= total/2, fmt.Sprintf("%d acknowledged", acked.Load())
	})
	mu.Lock()
	up = make(chan struct{})
	mu.Unlock()
	epoch.Add(1)
	c.Central.Kill()
	ackedAtKill, issuedAtKill := acked.Load(), min(issued.Load(), total)
	c.Central = c.StartCentral(t)
	c.Admin = c.Dial(t, c.Central.Addr, identity.Admin, "ops")
	mu.Lock()
	cur = conns{c.Admin, c.Dial(t, c.Central.Addr, identity.Client, "app")}
	epoch.Add(1)
	close(up)
	mu.Unlock()
	wg.Wait()
	if len(unexpected) > 0 {
		t.Fatalf("%d unexpected failures; first: %v", len(unexpected), errors.Join(unexpected[:min(5, len(unexpected))]...))
	}

	// The registry after the kill: contiguous versions, the newest
	// primary, every acknowledged rotation there, nothing from nowhere.
	list, err := c.Admin.KB.ListKeys(ctx, &kbv1.ListKeysRequest{PageSize: 100})
	must(t, "ListKeys", err)
	listed := map[string]*kbv1.KeyMetadata{}
	for _, m := range list.GetKeys() {
		listed[m.GetKeyId()] = m
	}
	var rev uint64
	failed, unacked := 0, 0
	for _, k := range keys {
		d, err := c.Admin.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: k.id})
		must(t, "DescribeKey "+k.id, err)
		m := d.GetKey()
		rev = max(rev, m.GetRevision())
		vs := m.GetVersions()
		for i, v := range vs {
			if v.GetVersion() != uint32(i+1) {
				t.Errorf("%s: version #%d is %d: versions not contiguous", k.id, i+1, v.GetVersion())
			}
		}
		n := uint32(len(vs))
		if m.GetPrimaryVersion() != n {
			t.Errorf("%s: primary version %d of %d versions", k.id, m.GetPrimaryVersion(), n)
		}
		if l := listed[k.id]; l == nil || l.GetPrimaryVersion() != n || len(l.GetVersions()) != int(n) {
			t.Errorf("%s: ListKeys says %v, DescribeKey %d versions", k.id, l, n)
		}
		if len(k.acked) > 0 && k.acked[len(k.acked)-1] > n {
			t.Errorf("%s: version %d was acknowledged, the registry has %d: an acknowledged rotation was lost", k.id, k.acked[len(k.acked)-1], n)
		}
		// Versions past 1 come from acknowledged rotations and from
		// failed ones that committed before central died.
		rotations := int(n) - 1
		if rotations < len(k.acked) || rotations > len(k.acked)+k.failed {
			t.Errorf("%s: %d versions after %d acknowledged and %d failed rotations", k.id, n, len(k.acked), k.failed)
		}
		failed += k.failed
		unacked += rotations - len(k.acked)
	}
	if len(listed) != len(keys) {
		t.Errorf("ListKeys lists %d keys, want %d", len(listed), len(keys))
	}

	// Every ciphertext issued opens, at central and at an edge, which
	// receives every version's material in its first snapshot.
	c.AddEdge(t, &framework.EdgeNode{Name: "edge-r", Region: "eu", Prefetch: true, Staleness: time.Hour})
	c.WaitApplied(t, rev)
	atCentral := c.Dial(t, c.Central.Addr, identity.Client, "app")
	atEdge := c.Dial(t, c.Edges["edge-r"].Proc.Addr, identity.Client, "app")
	pre, post := before.all(), after.all()
	var checks sync.WaitGroup
	for _, n := range []struct {
		name string
		node *framework.Conn
	}{{"central", atCentral}, {"edge-r", atEdge}} {
		for _, set := range []struct {
			what string
			msgs []faultMsg
		}{{"before the kill", pre}, {"after the restart", post}} {
			checks.Go(func() {
				if errs := faultDecryptAll(ctx, n.node, set.msgs); len(errs) > 0 {
					t.Errorf("%d of %d ciphertexts issued %s do not decrypt at %s; first: %v", len(errs), len(set.msgs), set.what, n.name, errs[0])
				}
			})
		}
	}
	checks.Wait()
	if got := c.OpsMetric(t, c.Edges["edge-r"].Proc.OpsAddr, "keybroker_edge_fetches_total"); got != 0 {
		t.Errorf("edge-r fetched material %v times: its snapshot should have held every version", got)
	}
	rep.Set("%d RotateKey calls over 8 keys (derive and wrap), central killed (SIGKILL) after %d acknowledged (%d issued) and restarted: %d acknowledged in all, %d failed while central was down (%d of those had committed); "+
		"registry consistent (versions contiguous, primary newest, 0 acknowledged rotations lost); %d ciphertexts issued before the kill and %d after all decrypt at central and at a prefetching edge",
		total, ackedAtKill, issuedAtKill, acked.Load(), failed, unacked, len(pre), len(post))
}
