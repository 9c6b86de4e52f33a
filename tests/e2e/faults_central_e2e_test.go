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
	"github.com/keybroker/keybroker/tests/framework"
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
	rep := framework.NewFaultReport(t, "central-sigkill")
	c := framework.NewProcesses(t,
		&framework.EdgeNode{Name: "edge-eu", Region: "eu", Prefetch: true, Staleness: time.Hour},
		&framework.EdgeNode{Name: "edge-us", Region: "us", Prefetch: true, Staleness: time.Hour},
		// Sorts after edge-eu, so LookupKey sends eu clients to edge-eu
		// first and this edge stays cold.
		&framework.EdgeNode{Name: "edge-eu-lazy", Region: "eu", Prefetch: false, Staleness: time.Hour},
	)
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
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
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)

	node := map[string]*framework.Conn{}
	for _, name := range c.Order {
		node[name] = c.Dial(t, c.Edges[name].Proc.Addr, identity.Client, "app")
	}
	eu, us := c.Edges["edge-eu"].Proc.Addr, c.Edges["edge-us"].Proc.Addr
	sdk := map[string]*client.Client{"edge-eu": c.SDKClient(t, "eu", eu, us), "edge-us": c.SDKClient(t, "us", us, eu)}

	// Ciphertexts made at central before the fault, opened at the edges
	// under load.
	atCentral := c.Dial(t, c.Central.Addr, identity.Client, "app")
	var corpus []faultMsg
	for i := range 8 {
		key := []string{"placed-derive", "placed-wrap"}[i%2]
		m := faultMsg{key: key, plaintext: fmt.Appendf(nil, "corpus %d", i), ectx: map[string]string{"corpus": strconv.Itoa(i)}}
		e, err := atCentral.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: m.plaintext, EncryptionContext: m.ectx})
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
	l := framework.StartLoad(ctx, 8, func(ctx context.Context, w, i int) error {
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
			mac, err := node[here].KB.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "placed-mac", Message: pt})
			if err != nil {
				return fmt.Errorf("GenerateMac: %w", err)
			}
			v, err := node[there].KB.VerifyMac(ctx, &kbv1.VerifyMacRequest{KeyId: "placed-mac", Message: pt, Mac: mac.GetMac()})
			if err != nil || !v.GetValid() {
				return fmt.Errorf("VerifyMac = %v, %v", v.GetValid(), err)
			}
			m := corpus[i%len(corpus)]
			d, err := node[here].KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: m.ciphertext, EncryptionContext: m.ectx})
			if err != nil || !bytes.Equal(d.GetPlaintext(), m.plaintext) {
				return fmt.Errorf("Decrypt of a ciphertext from central = %q, %v", d.GetPlaintext(), err)
			}
			return nil
		}
	})
	defer l.Stop()
	l.WaitOps(t, 300)

	c.Central.Kill()
	down.Store(true)
	opsAtKill, errsAtKill := l.Ops.Load(), l.Errs.Load()

	// Misses: calls only central can answer. Each must fail with
	// Unavailable well within its deadline, while the load goes on.
	edgeAdmin := c.Dial(t, eu, identity.Admin, "ops")
	created := 0
	misses := []struct {
		what string
		call func(ctx context.Context) error
	}{
		{"Encrypt with a backend-mode key at edge-eu", func(ctx context.Context) error {
			_, err := node["edge-eu"].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
			return err
		}},
		{"Encrypt with a backend-mode key at edge-us", func(ctx context.Context) error {
			_, err := node["edge-us"].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
			return err
		}},
		{"Encrypt with a key placed in eu at edge-us", func(ctx context.Context) error {
			_, err := node["edge-us"].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-only", Plaintext: []byte("x")})
			return err
		}},
		{"first use of a placed key at an edge that does not prefetch", func(ctx context.Context) error {
			_, err := node["edge-eu-lazy"].KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "placed-wrap", Plaintext: []byte("x")})
			return err
		}},
		{"CreateKey through edge-eu", func(ctx context.Context) error {
			created++
			_, err := edgeAdmin.Admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: fmt.Sprintf("made-%d", created), Type: aes, Mode: derive, Labels: owner})
			return err
		}},
		{"GenerateRandom at edge-us", func(ctx context.Context) error {
			_, err := node["edge-us"].KB.GenerateRandom(ctx, &kbv1.GenerateRandomRequest{Length: 16})
			return err
		}},
	}
	missed := 0
	for range 8 {
		for _, m := range misses {
			if err := framework.FailsFast(ctx, m.call); err != nil {
				t.Errorf("%s with central down: %v", m.what, err)
			}
			missed++
		}
	}
	// Let the load run a while longer on central's absence (a count, not
	// a time).
	l.WaitOps(t, l.Ops.Load()+1000)

	c.Central = c.StartCentral(t)
	c.Admin = c.Dial(t, c.Central.Addr, identity.Admin, "ops")
	down.Store(false)
	opsDown, errsDown := l.Ops.Load()-opsAtKill, l.Errs.Load()-errsAtKill

	// Recovery: the edges reconnect (central says so), and every miss
	// succeeds again.
	framework.Poll(t, "edges reconnected to the restarted central", func() (bool, string) {
		return c.Connected(ctx, c.Order...)
	})
	for _, m := range misses {
		framework.Poll(t, m.what+" after central restarted", func() (bool, string) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := m.call(cctx); err != nil {
				return false, err.Error()
			}
			return true, ""
		})
	}
	l.WaitOps(t, l.Ops.Load()+300)
	first := l.Stop()
	if n := l.Errs.Load(); n != 0 {
		t.Fatalf("%d of %d operations on placed keys failed (%d while central was down); first: %v", n, l.Ops.Load(), errsDown, errors.Join(first...))
	}

	// What the edges sealed while central was down opens at central.
	made := duringOutage.all()
	if errs := faultDecryptAll(ctx, atCentral, made); len(errs) > 0 {
		t.Fatalf("%d of %d ciphertexts made during the outage do not open at central; first: %v", len(errs), len(made), errs[0])
	}
	t.Logf("%d operations in all; %d while central was down", l.Ops.Load(), opsDown)
	rep.Set("%d operations by 8 workers at 2 prefetching edges while central was down (SIGKILL), 0 errors on placed keys (%d in the whole run of %d); "+
		"%d misses (backend-mode key, key placed elsewhere, cold edge, CreateKey, GenerateRandom) failed fast with Unavailable; "+
		"after restart on the same data dir and port the 3 edges reconnected and every miss succeeded; %d ciphertexts sealed at the edges during the outage all opened at central",
		opsDown, l.Errs.Load(), l.Ops.Load(), missed, len(made))
}
