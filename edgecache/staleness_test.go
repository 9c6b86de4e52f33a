package edgecache

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// TestStaleness cuts an edge off the central tier and moves its clock:
// it serves until its lease plus MaxStaleness has passed, then refuses
// with Unavailable naming max_staleness and zeroes its material.
func TestStaleness(t *testing.T) {
	for _, tc := range []struct {
		name      string
		staleness time.Duration
		// cut takes the edge off the central tier: central stops, or the
		// edge stops following it.
		stopCentral bool
	}{
		{"central stops, 10m window", 10 * time.Minute, true},
		{"Run cancelled, 10m window", 10 * time.Minute, false},
		{"central stops, no window", 0, true},
		{"Run cancelled, no window", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCentral(t)
			ctx := asApp(t.Context())
			c.createKeys(t, &kbv1.CreateKeyRequest{KeyId: "shared", Type: aes256, Mode: derive, Labels: appLabels, Placement: "true"})
			enc, err := c.kb.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: "shared", Plaintext: []byte("x")})
			must(t, "Encrypt at central", err)
			clk := newClock()
			cfg := edgeConfig(t, c, "edge-eu-1", t.TempDir())
			cfg.Prefetch, cfg.MaxStaleness, cfg.Now = true, tc.staleness, clk.Now
			ec := open(t, cfg)
			r := startRun(t, ec)
			synced(t, c, ec)
			decrypt := func() error {
				_, _, _, err := opsByID(ec).Decrypt(ctx, enc.GetCiphertext(), nil, "")
				return err
			}
			must(t, "Decrypt while connected", decrypt())
			if n := ec.Stats().MaterialEntries; n != 1 {
				t.Fatalf("material entries after a decrypt = %d, want 1", n)
			}

			if tc.stopCentral {
				c.stop()
				waitFor(t, "the edge to notice central is gone", func() bool { return !ec.Connected() })
			} else {
				r.stop(t)
			}
			lease := ec.LeaseExpires()
			if lease.IsZero() {
				t.Fatal("no lease after synchronising")
			}
			deadline := lease.Add(tc.staleness)

			// Just inside the window the replica is served.
			clk.Set(deadline.Add(-time.Nanosecond))
			if err := ec.Serving(); err != nil {
				t.Fatalf("Serving() 1ns before lease+max_staleness = %v, want nil", err)
			}
			if err := decrypt(); err != nil {
				t.Errorf("Decrypt 1ns before lease+max_staleness = %v", err)
			}

			// At the deadline every operation is refused, and says why.
			clk.Set(deadline)
			err = ec.Serving()
			if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "max_staleness "+tc.staleness.String()) {
				t.Fatalf("Serving() at lease+max_staleness = %v, want Unavailable naming max_staleness %s", err, tc.staleness)
			}
			if n := ec.Stats().MaterialEntries; n != 0 {
				t.Errorf("material entries once stale = %d, want 0 (zeroed)", n)
			}
			for op, err := range map[string]error{
				"Decrypt": decrypt(),
				"Get":     func() error { _, err := ec.Performer().Get(ctx, "shared"); return err }(),
				"ListKeys": func() error {
					_, _, err := ec.Performer().ListKeys(ctx, nil, 0, "", nil)
					return err
				}(),
				"Encrypt": func() error { _, _, err := opsByID(ec).Encrypt(ctx, "shared", []byte("x"), nil); return err }(),
				"GenerateRandom": func() error {
					_, err := opsByID(ec).GenerateRandom(ctx, 16)
					return err
				}(),
			} {
				if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "max_staleness") {
					t.Errorf("%s at a stale edge = %v, want Unavailable naming max_staleness", op, err)
				}
			}
			if m := ec.Stats().MaterialEntries; m != 0 {
				t.Errorf("material entries after refused calls = %d, want 0", m)
			}

			if tc.stopCentral {
				return
			}
			// Following central again brings a fresh lease: serving resumes.
			startRun(t, ec)
			waitFor(t, "a fresh lease", func() bool { return ec.Serving() == nil })
			if err := decrypt(); err != nil {
				t.Errorf("Decrypt after reconnecting = %v", err)
			}
		})
	}
}
