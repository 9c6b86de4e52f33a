package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

// TestFaultCentralSIGKILL kills the central tier (SIGKILL) while eight
// workers encrypt, decrypt and MAC with keys placed on two prefetching
// edges — six over gRPC straight to an edge, two through the Go SDK. While
// central is down every operation on a placed key must succeed at the
// edges, and every call that needs central (a backend-mode key, a key
// placed elsewhere, a key an edge has not fetched yet, CreateKey,
// GenerateRandom) must fail with Unavailable, not hang. Central then
// restarts on the same data directory and port: the edges reconnect, the
// misses succeed, and every ciphertext the edges made during the outage
// opens at central.
func TestFaultCentralSIGKILL(t *testing.T) {
	rep := newFaultReport(t, "central-sigkill")
	c := newEdgeCluster(t,
		&edgeNode{name: "edge-eu", region: "eu", prefetch: true, staleness: time.Hour},
		&edgeNode{name: "edge-us", region: "us", prefetch: true, staleness: time.Hour},
		// Sorts after edge-eu, so LookupKey sends eu clients to edge-eu
		// first and this edge stays cold.
		&edgeNode{name: "edge-eu-lazy", region: "eu", prefetch: false, staleness: time.Hour},
	)
	ctx := t.Context()
	owner := map[string]string{"owner": e2eTrustDomain}
	aes, hmac := kbv1.KeyType_KEY_TYPE_AES_256_GCM, kbv1.KeyType_KEY_TYPE_HMAC_SHA256
	derive, wrap, backend := kbv1.KeyMode_KEY_MODE_DERIVE, kbv1.KeyMode_KEY_MODE_WRAP, kbv1.KeyMode_KEY_MODE_BACKEND
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "placed-derive", Type: aes, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "placed-wrap", Type: aes, Mode: wrap, Labels: owner, Placement: "true"},
		{KeyId: "placed-mac", Type: hmac, Mode: derive, Labels: owner, Placement: "true"},
		{KeyId: "eu-only", Type: aes, Mode: wrap, Labels: owner, Placement: `principal.region == "eu"`},
		{KeyId: "hsm", Type: aes, Mode: backend, Labels: owner},
	} {
		m, err := c.admin.admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.waitApplied(t, rev)

	node := map[string]*rpc{}
	for _, name := range c.order {
		node[name] = c.dial(t, c.edges[name].p.addr, identity.Client, "app")
	}
	eu, us := c.edges["edge-eu"].p.addr, c.edges["edge-us"].p.addr
	sdk := map[string]*client.Client{"edge-eu": c.faultSDKClient(t, "eu", eu, us), "edge-us": c.faultSDKClient(t, "us", us, eu)}

	// Ciphertexts made at central before the fault, opened at the edges
	// under load.
	atCentral := c.dial(t, c.central.addr, identity.Client, "app")
	var corpus []faultMsg
	for i := range 8 {
		key := []string{"placed-derive", "placed-wrap"}[i%2]
		m := faultMsg{key: key, plaintext: fmt.Appendf(nil, "corpus %d", i), ectx: map[string]string{"corpus": strconv.Itoa(i)}}
		e, err := atCentral.kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: m.plaintext, EncryptionContext: m.ectx})
		must(t, "Encrypt at central", err)
		m.ciphertext = e.GetCiphertext()
		corpus = append(corpus, m)
	}

	edges := []string{"edge-eu", "edge-us"}
	var down atomic.Bool
	var duringOutage faultMsgs
	keep := func(m faultMsg) {
		if down.Load() {
			duringOutage.add(m)
		}
	}
	l := startFaultLoad(ctx, 8, func(ctx context.Context, w, i int) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		here, there := edges[w%2], edges[(w+1)%2]
		pt := fmt.Appendf(nil, "worker %d op %d", w, i)
		ectx := map[string]string{"worker": strconv.Itoa(w)}
		if w >= 6 { // the application, through the SDK
			cl := sdk[here]
			ct, err := cl.Encrypt(ctx, "placed-derive", pt, ectx)
			if err != nil {
				return fmt.Errorf("SDK Encrypt: %w", err)
			}
			got, err := cl.Decrypt(ctx, ct.Ciphertext, ectx)
			if err != nil {
				return fmt.Errorf("SDK Decrypt: %w", err)
			}
			if !bytes.Equal(got.Plaintext, pt) {
				return fmt.Errorf("SDK Decrypt = %q, want %q", got.Plaintext, pt)
			}
			keep(faultMsg{"placed-derive", ct.Ciphertext, pt, ectx})
			return nil
		}
		switch i % 3 {
		case 0: // encrypt and decrypt at this edge
			ct, err := faultRoundTrip(ctx, node[here], node[here], "placed-derive", pt, ectx)
			if err == nil {
				keep(faultMsg{"placed-derive", ct, pt, ectx})
			}
			return err
		case 1: // encrypt here, decrypt at the other edge
			ct, err := faultRoundTrip(ctx, node[here], node[there], "placed-wrap", pt, ectx)
			if err == nil {
				keep(faultMsg{"placed-wrap", ct, pt, ectx})
			}
			return err
		default: // a MAC, and a ciphertext central made before the fault
			mac, err := node[here].kb.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "placed-mac", Message: pt})
			if err != nil {
				return fmt.Errorf("GenerateMac: %w", err)
			}
			v, err := node[there].kb.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "placed-mac", Message: pt, Mac: mac.GetMac()})
			if err != nil || !v.GetValid() {
				return fmt.Errorf("VerifyMac = %v, %v", v.GetValid(), err)
			}
			m := corpus[i%len(corpus)]
			d, err := node[here].kb.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: m.ciphertext, EncryptionContext: m.ectx})
			if err != nil || !bytes.Equal(d.GetPlaintext(), m.plaintext) {
				return fmt.Errorf("Decrypt of a ciphertext from central = %q, %v", d.GetPlaintext(), err)
			}
			return nil
		}
	})
	defer l.stop()
	l.waitOps(t, 300)

	c.central.kill()
	down.Store(true)
	opsAtKill, errsAtKill := l.ops.Load(), l.errs.Load()

	// Misses: calls only central can answer. Each must fail with
	// Unavailable well within its deadline, while the load goes on.
	edgeAdmin := c.dial(t, eu, identity.Admin, "ops")
	created := 0
	misses := []struct {
		what string
		call func(ctx context.Context) error
	}{
		{"Encrypt with a backend-mode key at edge-eu", func(ctx context.Context) error {
			_, err := node["edge-eu"].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
			return err
		}},
		{"Encrypt with a backend-mode key at edge-us", func(ctx context.Context) error {
			_, err := node["edge-us"].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
			return err
		}},
		{"Encrypt with a key placed in eu at edge-us", func(ctx context.Context) error {
			_, err := node["edge-us"].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-only", Plaintext: []byte("x")})
			return err
		}},
		{"first use of a placed key at an edge that does not prefetch", func(ctx context.Context) error {
			_, err := node["edge-eu-lazy"].kb.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "placed-wrap", Plaintext: []byte("x")})
			return err
		}},
		{"CreateKey through edge-eu", func(ctx context.Context) error {
			created++
			_, err := edgeAdmin.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: fmt.Sprintf("made-%d", created), Type: aes, Mode: derive, Labels: owner})
			return err
		}},
		{"GenerateRandom at edge-us", func(ctx context.Context) error {
			_, err := node["edge-us"].kb.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 16})
			return err
		}},
	}
	missed := 0
	for range 8 {
		for _, m := range misses {
			if err := faultFailsFast(ctx, m.call); err != nil {
				t.Errorf("%s with central down: %v", m.what, err)
			}
			missed++
		}
	}
	// Let the load run a while longer on central's absence (a count, not
	// a time).
	l.waitOps(t, l.ops.Load()+1000)

	c.central = c.startCentral(t)
	c.admin = c.dial(t, c.central.addr, identity.Admin, "ops")
	down.Store(false)
	opsDown, errsDown := l.ops.Load()-opsAtKill, l.errs.Load()-errsAtKill

	// Recovery: the edges reconnect (central says so), and every miss
	// succeeds again.
	faultPoll(t, "edges reconnected to the restarted central", func() (bool, string) {
		return c.connected(ctx, c.order...)
	})
	for _, m := range misses {
		faultPoll(t, m.what+" after central restarted", func() (bool, string) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := m.call(cctx); err != nil {
				return false, err.Error()
			}
			return true, ""
		})
	}
	l.waitOps(t, l.ops.Load()+300)
	first := l.stop()
	if n := l.errs.Load(); n != 0 {
		t.Fatalf("%d of %d operations on placed keys failed (%d while central was down); first: %v", n, l.ops.Load(), errsDown, errors.Join(first...))
	}

	// What the edges sealed while central was down opens at central.
	made := duringOutage.all()
	if errs := faultDecryptAll(ctx, atCentral, made); len(errs) > 0 {
		t.Fatalf("%d of %d ciphertexts made during the outage do not open at central; first: %v", len(errs), len(made), errs[0])
	}
	t.Logf("%d operations in all; %d while central was down", l.ops.Load(), opsDown)
	rep.set("%d operations by 8 workers at 2 prefetching edges while central was down (SIGKILL), 0 errors on placed keys (%d in the whole run of %d); "+
		"%d misses (backend-mode key, key placed elsewhere, cold edge, CreateKey, GenerateRandom) failed fast with Unavailable; "+
		"after restart on the same data dir and port the 3 edges reconnected and every miss succeeded; %d ciphertexts sealed at the edges during the outage all opened at central",
		opsDown, l.errs.Load(), l.ops.Load(), missed, len(made))
}
