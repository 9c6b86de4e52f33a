package server

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/etcdtest"
)

// A forward proof spent at one central cannot be spent again at another
// sharing the same etcd store: the nonce is claimed across the tier, where
// each central's own replay cache would let a compromised edge replay the
// proof once per central.
func TestProofSpentOnceAcrossCentrals(t *testing.T) {
	etcd := etcdtest.Start(t, 1)
	open := func() *store.Etcd {
		s, err := store.OpenEtcd(t.Context(), store.EtcdConfig{Endpoints: etcd.Endpoints(), Prefix: "/proofs/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	verifier := func(st *store.Etcd) *proofVerifier {
		return &proofVerifier{now: time.Now, seen: newReplayCache(maxNonces), claim: st, log: slog.New(slog.DiscardHandler)}
	}
	a, b := verifier(open()), verifier(open())
	p := verifiedProof{nonce: [16]byte{1, 2, 3}, expires: time.Now().Add(2 * time.Minute)}
	if err := a.record(t.Context(), p); err != nil {
		t.Fatalf("first spend at central a: %v", err)
	}
	if err := b.record(t.Context(), p); !errors.Is(err, errReplay) {
		t.Errorf("the same proof at central b: %v, want errReplay", err)
	}
	if err := a.record(t.Context(), p); !errors.Is(err, errReplay) {
		t.Errorf("the same proof again at central a: %v, want errReplay", err)
	}
	other := verifiedProof{nonce: [16]byte{4, 5, 6}, expires: time.Now().Add(2 * time.Minute)}
	if err := b.record(t.Context(), other); err != nil {
		t.Errorf("another proof at central b: %v", err)
	}
	// A store that cannot record refuses the proof rather than let it run
	// unrecorded.
	down := open()
	c := verifier(down)
	down.Close()
	third := verifiedProof{nonce: [16]byte{7}, expires: time.Now().Add(2 * time.Minute)}
	if err := c.record(t.Context(), third); !errors.Is(err, errNonceUnrecorded) {
		t.Errorf("with the store closed: %v, want errNonceUnrecorded", err)
	}
}
