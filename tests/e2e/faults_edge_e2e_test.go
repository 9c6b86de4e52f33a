package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestFaultEdgeSIGKILL kills an edge (SIGKILL) while eight SDK workers
// encrypt and decrypt through it and central streams it key changes (a
// key rotating in the background, so the edge is writing its replica when
// it dies). The SDK must move the calls to the other edge or central with
// no error reaching the application. Then central is killed too, and the
// edge restarts from its data directory alone: it must serve from what it
// had on disk — every ciphertext made before the kill decrypts there, with
// no material fetched and nothing forwarded — and, once central is back,
// catch up with the changes it missed.
func TestFaultEdgeSIGKILL(t *testing.T) {
	rep := framework.NewFaultReport(t, "edge-sigkill")
	c := framework.NewProcesses(t,
		&framework.EdgeNode{Name: "edge-a", Region: "eu", Prefetch: true, Staleness: time.Hour},
		&framework.EdgeNode{Name: "edge-b", Region: "eu", Prefetch: true, Staleness: time.Hour},
	)
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	aes := kbv1.KeyType_KEY_TYPE_AES_256_GCM
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "orders", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner, Placement: "true"},
		{KeyId: "records", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: owner, Placement: "true"},
		{KeyId: "churn", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner, Placement: "true"},
	} {
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	// A ciphertext under version 1 of orders, then version 2.
	atCentral := c.Dial(t, c.Central.Addr, identity.Client, "app")
	old := faultMsg{key: "orders", plaintext: []byte("under version 1"), ectx: map[string]string{"v": "1"}}
	e, err := atCentral.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "orders", Plaintext: old.plaintext, EncryptionContext: old.ectx})
	must(t, "Encrypt", err)
	old.ciphertext = e.GetCiphertext()
	m, err := c.Admin.Admin.RotateKey(ctx, &kbv1.KeyRequest{KeyId: "orders"})
	must(t, "RotateKey", err)
	c.WaitApplied(t, max(rev, m.GetRevision()))

	ea := c.Edges["edge-a"]
	a, b := ea.Proc.Addr, c.Edges["edge-b"].Proc.Addr
	// eu clients: LookupKey puts edge-a first (same region, id order).
	cl := c.SDKClient(t, "eu", a, b, c.Central.Addr)
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "records"})
	must(t, "NewEncryptor", err)
	dec := cl.NewDecryptor(client.DecryptorConfig{})

	// Key changes keep flowing to the edges during the load.
	churnCtx, stopChurn := context.WithCancel(ctx)
	var churned atomic.Int64
	var churn sync.WaitGroup
	churn.Go(func() {
		for churnCtx.Err() == nil {
			if _, err := c.Admin.Admin.RotateKey(churnCtx, &kbv1.KeyRequest{KeyId: "churn"}); err == nil {
				churned.Add(1)
			}
		}
	})
	defer func() { stopChurn(); churn.Wait() }()

	var killed atomic.Bool
	var before, after faultMsgs
	l := framework.StartLoad(ctx, 8, func(ctx context.Context, w, i int) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		msg := faultMsg{plaintext: fmt.Appendf(nil, "worker %d op %d", w, i), ectx: map[string]string{"worker": strconv.Itoa(w)}}
		if w >= 6 { // client-side envelope, data key from the edge
			msg.key = "records"
			ct, err := enc.Encrypt(ctx, msg.plaintext, msg.ectx)
			if err != nil {
				return fmt.Errorf("Encryptor.Encrypt: %w", err)
			}
			msg.ciphertext = ct
			pt, err := dec.Decrypt(ctx, ct, msg.ectx)
			if err != nil || !bytes.Equal(pt, msg.plaintext) {
				return fmt.Errorf("Decryptor.Decrypt = %q, %v", pt, err)
			}
			// And at a node, so that every operation makes a call.
			if p, err := cl.Decrypt(ctx, ct, msg.ectx); err != nil || !bytes.Equal(p.Plaintext, msg.plaintext) {
				return fmt.Errorf("Decrypt of an Encryptor's ciphertext = %v, %v", p, err)
			}
		} else {
			msg.key = []string{"orders", "records"}[w%2]
			ct, err := cl.Encrypt(ctx, msg.key, msg.plaintext, msg.ectx)
			if err != nil {
				return fmt.Errorf("Encrypt: %w", err)
			}
			msg.ciphertext = ct.Ciphertext
			pt, err := cl.Decrypt(ctx, ct.Ciphertext, msg.ectx)
			if err != nil || !bytes.Equal(pt.Plaintext, msg.plaintext) {
				return fmt.Errorf("Decrypt = %v, %v", pt, err)
			}
		}
		if killed.Load() {
			after.add(msg)
		} else {
			before.add(msg)
		}
		return nil
	})
	defer l.Stop()
	l.WaitOps(t, 300)
	callsBefore := cl.Calls()
	ea.Proc.Kill()
	killed.Store(true)
	opsAtKill := l.Ops.Load()
	l.WaitOps(t, opsAtKill+300)
	first := l.Stop()
	stopChurn()
	churn.Wait()
	if n := l.Errs.Load(); n != 0 {
		t.Fatalf("%d of %d operations failed for the application when edge-a was killed; first: %v", n, l.Ops.Load(), errors.Join(first...))
	}
	callsAfter := cl.Calls()
	moved := callsAfter[b] - callsBefore[b] + callsAfter[c.Central.Addr] - callsBefore[c.Central.Addr]
	if moved == 0 {
		t.Errorf("no call moved to edge-b or central after edge-a died: %v → %v", callsBefore, callsAfter)
	}
	if callsBefore[a] == 0 {
		t.Errorf("edge-a served nothing before it was killed: %v", callsBefore)
	}

	// Central goes too: whatever edge-a serves now comes from its disk.
	c.Central.Kill()
	ea.Proc = framework.StartNode(t, "edge", ea.Config)
	atA := c.Dial(t, ea.Proc.Addr, identity.Client, "app")
	made := append(before.all(), old)
	if errs := faultDecryptAll(ctx, atA, made); len(errs) > 0 {
		t.Fatalf("edge-a restarted from disk, central down: %d of %d ciphertexts made before the kill do not decrypt; first: %v", len(errs), len(made), errs[0])
	}
	later := after.all()
	if errs := faultDecryptAll(ctx, atA, later); len(errs) > 0 {
		t.Fatalf("edge-a restarted from disk, central down: %d of %d ciphertexts made after the kill (at edge-b or central) do not decrypt; first: %v", len(errs), len(later), errs[0])
	}
	if _, err := faultRoundTrip(ctx, atA, atA, "orders", []byte("fresh"), nil); err != nil {
		t.Errorf("Encrypt at edge-a restarted from disk with central down: %v", err)
	}
	fromDisk := c.OpsMetric(t, ea.Proc.OpsAddr, "keybroker_edge_material_misses_total")
	for _, metric := range []string{"keybroker_edge_fetches_total", "keybroker_edge_forwards_total"} {
		if got := c.OpsMetric(t, ea.Proc.OpsAddr, metric); got != 0 {
			t.Errorf("%s at edge-a restarted with central down = %v, want 0: it must serve from its disk", metric, got)
		}
	}

	// Central comes back: edge-a catches up with the rotations it missed,
	// still without fetching material it held.
	c.Central = c.StartCentral(t)
	c.Admin = c.Dial(t, c.Central.Addr, identity.Admin, "ops")
	dk, err := c.Admin.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "churn"})
	must(t, "DescribeKey churn", err)
	churnKey := dk.GetKey()
	c.WaitApplied(t, churnKey.GetRevision())
	d, err := atA.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "churn"})
	if err != nil || d.GetKey().GetPrimaryVersion() != churnKey.GetPrimaryVersion() {
		t.Errorf("DescribeKey(churn) at edge-a after central came back = version %d, %v; want %d", d.GetKey().GetPrimaryVersion(), err, churnKey.GetPrimaryVersion())
	}
	if errs := faultDecryptAll(ctx, atA, made); len(errs) > 0 {
		t.Errorf("after central came back: %d ciphertexts do not decrypt at edge-a; first: %v", len(errs), errs[0])
	}
	if got := c.OpsMetric(t, ea.Proc.OpsAddr, "keybroker_edge_fetches_total"); got != 0 {
		t.Errorf("keybroker_edge_fetches_total at edge-a after it caught up = %v, want 0", got)
	}
	t.Logf("calls by node before the kill %v, after %v", callsBefore, callsAfter)
	rep.Set("8 SDK workers, %d operations, edge-a killed (SIGKILL) after %d while central streamed it %d rotations; 0 errors reached the application (%d calls moved to edge-b or central); "+
		"edge-a restarted from its data dir with central also killed: %d of %d ciphertexts made before the kill and %d made after it decrypted there, "+
		"%v material versions opened from disk, 0 fetches, 0 forwards; after central restarted edge-a caught up to churn version %d with 0 fetches",
		l.Ops.Load(), opsAtKill, churned.Load(), moved, len(made), len(made), len(later), fromDisk, churnKey.GetPrimaryVersion())
}
