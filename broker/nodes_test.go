package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/sealed"
)

// TestNodeEnrollment: Register keeps the enrolled region and labels, and a
// record left from before enrollment existed is refused until an admin
// enrolls it, which keeps its registration.
func TestNodeEnrollment(t *testing.T) {
	r, _, _ := newRegistry(t)
	ctx := t.Context()
	sk, err := sealed.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	reg := Registration{ID: "edge-1", Address: "edge-1.example:7443", SealingKey: sk.PublicKey()}
	if _, err := r.RegisterNode(ctx, reg); !errors.Is(err, managed.ErrPermissionDenied) {
		t.Fatalf("RegisterNode before enrollment = %v, want ErrPermissionDenied", err)
	}
	if _, err := r.EnrollNode(ctx, "edge-1", "eu", map[string]string{"zone": "a"}); err != nil {
		t.Fatal(err)
	}
	n, err := r.RegisterNode(ctx, reg)
	if err != nil || n.Region != "eu" || n.Labels["zone"] != "a" || !n.Enrolled || n.Address != reg.Address {
		t.Fatalf("RegisterNode = %+v, %v", n, err)
	}

	// A record as written before enrollment existed: region and labels
	// the edge chose, no enrolled flag.
	legacy, _ := json.Marshal(map[string]any{"id": "edge-old", "region": "eu", "address": "old.example:7443",
		"sealing_key": sk.PublicKey(), "registered": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z"})
	if _, err := r.Store().Put(ctx, KindNodes, "edge-old", legacy, 0); err != nil {
		t.Fatal(err)
	}
	old, err := r.Node(ctx, "edge-old")
	if err != nil || old.Enrolled {
		t.Fatalf("legacy record = %+v, %v; want it read as not enrolled", old, err)
	}
	if _, err := r.RegisterNode(ctx, Registration{ID: "edge-old", Address: "old.example:7443", SealingKey: sk.PublicKey()}); !errors.Is(err, managed.ErrPermissionDenied) {
		t.Errorf("RegisterNode of a legacy record = %v, want ErrPermissionDenied", err)
	}
	n, err = r.EnrollNode(ctx, "edge-old", "us", nil)
	if err != nil || !n.Enrolled || n.Region != "us" || n.Address != "old.example:7443" || !n.IsRegistered() {
		t.Errorf("EnrollNode of a legacy record = %+v, %v; want it enrolled in us with its registration kept", n, err)
	}
	if _, err := r.EnrollNode(ctx, "edge-old", "eu", nil); !errors.Is(err, managed.ErrAlreadyExists) {
		t.Errorf("EnrollNode twice = %v, want ErrAlreadyExists", err)
	}
	if _, err := r.RemoveNode(ctx, "edge-old"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Node(ctx, "edge-old"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("Node after RemoveNode = %v, want ErrNotFound", err)
	}
}

// TestRegisterRefusesOversizeAddress: an edge's address goes to every
// edge in every inventory event and in every LookupKey answer, so Register
// takes only a short host:port whose host is an IP address or a DNS name,
// and stores nothing else.
func TestRegisterRefusesOversizeAddress(t *testing.T) {
	r, _, _ := newRegistry(t)
	ctx := t.Context()
	sk, err := sealed.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.EnrollNode(ctx, "edge-1", "eu", nil); err != nil {
		t.Fatal(err)
	}
	label := strings.Repeat("a", 63)
	name253 := strings.Join([]string{label, label, label, label[:61]}, ".")
	for _, tc := range []struct {
		name, address string
		ok            bool
	}{
		{"DNS name", "edge-1.example:7443", true},
		{"IPv4", "10.0.0.5:7443", true},
		{"IPv6", "[2001:db8::1]:7443", true},
		{"DNS name of 253 bytes", name253 + ":7443", true},
		{"1 MB host", strings.Repeat("a", 1<<20) + ":7443", false},
		{"DNS name of 254 bytes", name253 + "a:7443", false},
		{"label of 64 bytes", label + "a.example:7443", false},
		{"empty label", "edge..example:7443", false},
		{"label starting with a hyphen", "-edge.example:7443", false},
		{"newline", "edge\n.example:7443", false},
		{"NUL", "edge\x00.example:7443", false},
		{"space", "edge example:7443", false},
		{"IPv6 zone", "[fe80::1%eth0]:7443", false},
		{"non-ASCII", "édge.example:7443", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := r.RegisterNode(ctx, Registration{ID: "edge-1", Address: tc.address, SealingKey: sk.PublicKey()})
			if tc.ok {
				if err != nil || n.Address != tc.address {
					t.Fatalf("RegisterNode(%.40q) = %v, %v; want it stored", tc.address, n, err)
				}
				return
			}
			if !errors.Is(err, managed.ErrInvalidArgument) {
				t.Fatalf("RegisterNode(%.40q) = %v, want ErrInvalidArgument", tc.address, err)
			}
			if got, err := r.Node(ctx, "edge-1"); err != nil || got.Address == tc.address {
				t.Fatalf("after the refusal the record holds %.40q (%v)", got.Address, err)
			}
		})
	}
}

// TestRegisterUnchangedWritesNothing: every node write is an inventory
// event to every edge, so a Register that changes nothing writes nothing,
// until LastSeen is lastSeenRefresh old.
func TestRegisterUnchangedWritesNothing(t *testing.T) {
	r, clk, _ := newRegistry(t)
	ctx := t.Context()
	sk, err := sealed.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.EnrollNode(ctx, "edge-1", "eu", nil); err != nil {
		t.Fatal(err)
	}
	reg := Registration{ID: "edge-1", Address: "edge-1.example:7443", SealingKey: sk.PublicKey()}
	first, err := r.RegisterNode(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		change  func()
		written bool
	}{
		{"the same again", func() {}, false},
		{"a minute later", func() { clk.Advance(time.Minute) }, false},
		{"a new address", func() { reg.Address = "edge-1.example:8443" }, true},
		{"prefetch", func() { reg.Prefetch = true }, true},
		{"a new sealing key", func() { k, _ := sealed.GenerateKey(); reg.SealingKey = k.PublicKey() }, true},
		{"the same again", func() {}, false},
		{"LastSeen due for refresh", func() { clk.Advance(lastSeenRefresh) }, true},
	}
	prev := first
	for _, s := range steps {
		s.change()
		before := r.Store().Revision()
		n, err := r.RegisterNode(ctx, reg)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if written := r.Store().Revision() != before; written != s.written {
			t.Errorf("%s: written = %v, want %v", s.name, written, s.written)
		}
		if n.Address != reg.Address || n.Prefetch != reg.Prefetch || !bytes.Equal(n.SealingKey, reg.SealingKey) ||
			(!s.written && n.Revision != prev.Revision) || !n.Registered.Equal(first.Registered) {
			t.Errorf("%s: RegisterNode = %+v, want the registration at revision %d", s.name, n, prev.Revision)
		}
		prev = n
	}
}
