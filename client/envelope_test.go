package client_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
)

// clock is a settable clock for reuse periods and cache lifetimes.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func total(m map[string]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

// TestEnvelopeInteroperates seals with an Encryptor and opens at a node,
// seals at a node and opens with a Decryptor, for every mode of AES key;
// wrong contexts and tampering fail as they do at the nodes.
func TestEnvelopeInteroperates(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	cl := c.client(t, "eu", c.eu, c.central)
	dec := cl.NewDecryptor(client.DecryptorConfig{})
	defer dec.Close()
	for _, key := range []string{"shared", "eu-only", "derived"} {
		t.Run(key, func(t *testing.T) {
			enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: key})
			if err != nil {
				t.Fatal(err)
			}
			defer enc.Close()
			ectx := map[string]string{"queue": "orders", "tenant": "42"}
			for _, size := range []int{0, 1, 1024, 1 << 20} {
				msg := make([]byte, size)
				for i := range msg {
					msg[i] = byte(i * 7)
				}
				local, err := enc.Encrypt(ctx, msg, ectx)
				if err != nil {
					t.Fatalf("Encryptor.Encrypt(%d bytes): %v", size, err)
				}
				if size <= 1<<20 {
					pt, err := cl.Decrypt(ctx, local, ectx)
					if err != nil || string(pt.Plaintext) != string(msg) {
						t.Errorf("node Decrypt of an Encryptor's %d bytes: %v", size, err)
					}
				}
				if pt, err := dec.Decrypt(ctx, local, ectx); err != nil || string(pt) != string(msg) {
					t.Errorf("Decryptor of an Encryptor's %d bytes: %v", size, err)
				}
				remote, err := cl.Encrypt(ctx, key, msg, ectx)
				if err != nil {
					t.Fatal(err)
				}
				if pt, err := dec.Decrypt(ctx, remote.Ciphertext, ectx); err != nil || string(pt) != string(msg) {
					t.Errorf("Decryptor of a node's %d bytes: %v", size, err)
				}
			}
			ct, err := enc.Encrypt(ctx, []byte("secret"), ectx)
			if err != nil {
				t.Fatal(err)
			}
			other := map[string]string{"queue": "orders", "tenant": "43"}
			_, err = dec.Decrypt(ctx, ct, other)
			wantCode(t, "Decryptor with the wrong context", err, client.ErrInvalidArgument, codes.InvalidArgument)
			_, err = cl.Decrypt(ctx, ct, other)
			wantCode(t, "node Decrypt of an Encryptor's ciphertext with the wrong context", err, client.ErrInvalidArgument, codes.InvalidArgument)
			// Flip the format byte, a wrapped-key byte, a nonce byte and
			// a tag byte. (A flipped key id names another key: NotFound.)
			hdr := 1 + 1 + len(key) + 4 + 2
			for _, i := range []int{0, hdr + 5, hdr + envelope.WrappedDEKLen + 3, len(ct) - 1} {
				bad := append([]byte(nil), ct...)
				bad[i] ^= 0x01
				_, err := dec.Decrypt(ctx, bad, ectx)
				wantCode(t, fmt.Sprintf("Decryptor of a ciphertext with byte %d flipped", i), err, client.ErrInvalidArgument, codes.InvalidArgument)
			}
			_, err = dec.Decrypt(ctx, ct[:len(ct)-1], ectx)
			wantCode(t, "Decryptor of a truncated ciphertext", err, client.ErrInvalidArgument, codes.InvalidArgument)
		})
	}
	_, err := cl.NewEncryptor(client.EncryptorConfig{Key: "bad key"})
	if err == nil {
		t.Error("NewEncryptor accepted an invalid key id")
	}
	_, err = cl.NewEncryptor(client.EncryptorConfig{Key: "shared", Reuse: envelope.ReusePolicy{Period: time.Second}})
	if err == nil {
		t.Error("NewEncryptor accepted a 1 s reuse period")
	}
}

// TestEnvelopeReuse counts data keys and calls: one data key per reuse
// period and encryption context, however many messages; one fetch per data
// key on the decrypting side, however many messages and concurrent misses.
func TestEnvelopeReuse(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	clk := newClock()
	cl := c.client(t, "us", c.us)
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "derived", Reuse: envelope.ReusePolicy{Period: time.Minute}, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ectx := map[string]string{"queue": "q1"}
	var cts [][]byte
	before := total(cl.Calls())
	for i := range 1000 {
		ct, err := enc.Encrypt(ctx, fmt.Appendf(nil, "message %d", i), ectx)
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
	}
	if s := enc.Stats(); s.DataKeys != 1 || s.Messages != 1000 {
		t.Errorf("after 1000 messages: %+v, want 1 data key", s)
	}
	if n := total(cl.Calls()) - before; n > 2 {
		t.Errorf("1000 messages made %d calls, want at most 2 (a lookup and GenerateDataKey)", n)
	}
	clk.advance(59 * time.Second)
	if _, err := enc.Encrypt(ctx, []byte("late"), ectx); err != nil || enc.Stats().DataKeys != 1 {
		t.Errorf("within the period: %d data keys, %v", enc.Stats().DataKeys, err)
	}
	clk.advance(2 * time.Second)
	if _, err := enc.Encrypt(ctx, []byte("next period"), ectx); err != nil || enc.Stats().DataKeys != 2 {
		t.Errorf("after the period: %d data keys, %v; want 2", enc.Stats().DataKeys, err)
	}
	if _, err := enc.Encrypt(ctx, []byte("other queue"), map[string]string{"queue": "q2"}); err != nil || enc.Stats().DataKeys != 3 {
		t.Errorf("another context: %d data keys, %v; want 3", enc.Stats().DataKeys, err)
	}

	// Decrypting: 64 goroutines miss together, then 1000 messages hit.
	dec := cl.NewDecryptor(client.DecryptorConfig{Now: clk.now})
	before = total(cl.Calls())
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range 64 {
		wg.Go(func() {
			if _, err := dec.Decrypt(ctx, cts[i], ectx); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	for i, ct := range cts {
		pt, err := dec.Decrypt(ctx, ct, ectx)
		if err != nil || string(pt) != fmt.Sprintf("message %d", i) {
			t.Fatalf("Decrypt message %d: %q, %v", i, pt, err)
		}
	}
	if failed.Load() > 0 {
		t.Errorf("%d concurrent cold decrypts failed", failed.Load())
	}
	if s := dec.Stats(); s.DataKeys != 1 || s.Messages != 1064 {
		t.Errorf("Decryptor after 64 concurrent misses and 1000 messages: %+v, want 1 data key", s)
	}
	if n := total(cl.Calls()) - before; n != 2 {
		t.Errorf("decrypting made %d calls, want 2 (a lookup and DecryptDataKey)", n)
	}

	// A disabled key: no new data keys either way.
	if _, err := c.admin.DisableKey(ctx, &kbv1.KeyRequest{KeyId: "derived"}); err != nil {
		t.Fatal(err)
	}
	c.synced(t)
	_, err = enc.Encrypt(ctx, []byte("x"), map[string]string{"queue": "q3"})
	wantCode(t, "Encryptor with a disabled key and a new context", err, client.ErrFailedPrecondition, codes.FailedPrecondition)
	_, err = cl.NewDecryptor(client.DecryptorConfig{}).Decrypt(ctx, cts[0], ectx)
	wantCode(t, "a fresh Decryptor with a disabled key", err, client.ErrFailedPrecondition, codes.FailedPrecondition)
}

// TestDecryptDataKeyIsItsOwnAction: a client allowed Encrypt, Decrypt and
// GenerateDataKey but not DecryptDataKey decrypts through the nodes and is
// refused data keys.
func TestDecryptDataKeyIsItsOwnAction(t *testing.T) {
	dc := startDev(t, devcluster.Options{Edges: []devcluster.EdgeSpec{}, Policy: `
@id("admins") permit (principal is Admin, action, resource);
@id("clients") permit (principal is Client, action in [Action::"Encrypt", Action::"Decrypt", Action::"GenerateDataKey", Action::"LookupKey"], resource is Key);
`})
	c := &cluster{Cluster: dc, central: dc.Central.Addr()}
	if _, err := adminClient(t, dc).CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: "k", Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE}); err != nil {
		t.Fatal(err)
	}
	cl := c.client(t, "", c.central)
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := enc.Encrypt(t.Context(), []byte("hi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := cl.Decrypt(t.Context(), ct, nil); err != nil || string(pt.Plaintext) != "hi" {
		t.Errorf("Decrypt = %v", err)
	}
	_, err = cl.NewDecryptor(client.DecryptorConfig{}).Decrypt(t.Context(), ct, nil)
	wantCode(t, "Decryptor without DecryptDataKey", err, client.ErrPermissionDenied, codes.PermissionDenied)
}

// adminClient is a KeyAdmin client of the central node, as the admin.
func adminClient(t testing.TB, dc *devcluster.Cluster) kbv1.KeyAdminClient {
	t.Helper()
	tlsCfg, err := dc.ClientTLS(identity.Admin, devcluster.AdminName)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(t.Context(), client.Config{Addrs: []string{dc.Central.Addr()}, TLS: tlsCfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	admin, err := cl.Admin()
	if err != nil {
		t.Fatal(err)
	}
	return admin
}

// TestEncryptorConcurrentRollover encrypts from many goroutines through one
// Encryptor, in two contexts, while its data keys roll over by message
// count, byte count and period (the clock moves between messages, never
// during one). Grouped by the data key in their headers, no key sealed
// more messages or bytes than the policy allows or a message at or after
// the end of its period; every message opens with a Decryptor, and a
// sample at a node.
func TestEncryptorConcurrentRollover(t *testing.T) {
	const (
		period   = time.Minute
		maxMsgs  = 50
		maxBytes = 20 << 10
		workers  = 8
		perG     = 300
	)
	c := startCluster(t)
	ctx := t.Context()
	clk := newClock()
	var epoch sync.RWMutex // held for reading during each Encrypt
	cl := c.client(t, "us", c.us)
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "shared", Now: clk.now,
		Reuse: envelope.ReusePolicy{Period: period, MaxMessages: maxMsgs, MaxBytes: maxBytes}})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	type sealed struct {
		ct, pt []byte
		ectx   map[string]string
		at     time.Time
	}
	out := make([][]sealed, workers)
	var count atomic.Int64
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			ectx := map[string]string{"queue": fmt.Sprintf("q%d", g%2)}
			for i := range perG {
				// Stretches of 400 messages: in the first of every three
				// the clock moves 20 s every 8 messages, so keys end by
				// their period; in the second messages are small and
				// keys end by their message count; in the third they are
				// large and keys end by their byte count.
				stretch := count.Load() / 400 % 3
				size := (g*perG + i) * 7919 % 700
				if stretch == 2 {
					size = (g*perG + i) * 7919 % 1400
				}
				pt := make([]byte, size)
				for j := range pt {
					pt[j] = byte(g + i + j)
				}
				epoch.RLock()
				at := clk.now()
				ct, err := enc.Encrypt(ctx, pt, ectx)
				epoch.RUnlock()
				if err != nil {
					t.Errorf("Encrypt: %v", err)
					return
				}
				out[g] = append(out[g], sealed{ct: ct, pt: pt, ectx: ectx, at: at})
				if n := count.Add(1); n%8 == 0 && stretch == 0 {
					epoch.Lock()
					clk.advance(20 * time.Second)
					epoch.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	type usage struct {
		msgs, bytes int
		first, last time.Time
		contexts    map[string]bool
	}
	use := map[string]*usage{}
	var all []sealed
	for _, s := range out {
		all = append(all, s...)
	}
	for _, s := range all {
		h, _, err := envelope.ParseHeader(s.ct)
		if err != nil {
			t.Fatal(err)
		}
		u := use[string(h.WrappedDEK)]
		if u == nil {
			u = &usage{first: s.at, last: s.at, contexts: map[string]bool{}}
			use[string(h.WrappedDEK)] = u
		}
		u.msgs++
		u.bytes += len(s.pt)
		u.contexts[s.ectx["queue"]] = true
		if s.at.Before(u.first) {
			u.first = s.at
		}
		if s.at.After(u.last) {
			u.last = s.at
		}
	}
	// A data key's first message is sealed while the clock still reads
	// the time its period started from: the Encrypt that got the key
	// holds the clock until it has sealed, or another Encrypt of that
	// moment has.
	full, spent := 0, 0
	for _, u := range use {
		if u.msgs > maxMsgs || u.bytes > maxBytes {
			t.Errorf("a data key sealed %d messages and %d bytes; limits %d and %d", u.msgs, u.bytes, maxMsgs, maxBytes)
		}
		if u.last.Sub(u.first) >= period {
			t.Errorf("a data key sealed messages from %s to %s, beyond its %s period", u.first.Format(time.TimeOnly), u.last.Format(time.TimeOnly), period)
		}
		if len(u.contexts) != 1 {
			t.Errorf("a data key sealed messages in %d contexts", len(u.contexts))
		}
		if u.msgs == maxMsgs {
			full++
		}
		if u.bytes > maxBytes-1400 {
			spent++
		}
	}
	if full == 0 || spent == 0 || len(use)-full-spent <= 0 {
		t.Errorf("of %d data keys %d reached the message limit and %d the byte limit: the test no longer crosses all three limits", len(use), full, spent)
	}
	if s := enc.Stats(); s.Messages != workers*perG || s.DataKeys != uint64(len(use)) {
		t.Errorf("Stats = %+v; want %d messages and %d data keys (those in the headers)", s, workers*perG, len(use))
	}
	t.Logf("%d messages under %d data keys: %d ended at the message limit, %d near the byte limit", len(all), len(use), full, spent)

	dec := cl.NewDecryptor(client.DecryptorConfig{})
	defer dec.Close()
	var next atomic.Int64
	for range 4 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(all); i = int(next.Add(1) - 1) {
				s := all[i]
				pt, err := dec.Decrypt(ctx, s.ct, s.ectx)
				if err != nil || string(pt) != string(s.pt) {
					t.Errorf("Decryptor: message %d: %v", i, err)
				}
				if i%97 == 0 {
					if pt, err := cl.Decrypt(ctx, s.ct, s.ectx); err != nil || string(pt.Plaintext) != string(s.pt) {
						t.Errorf("node Decrypt: message %d: %v", i, err)
					}
				}
			}
		})
	}
	wg.Wait()
}
