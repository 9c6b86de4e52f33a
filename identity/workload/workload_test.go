package workload_test

import (
	"context"
	"crypto/x509"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/identity/workload/workloadtest"
)

const (
	centralID = "spiffe://kb.test/central/c1"
	clientID  = "spiffe://kb.test/client/app"
)

func newSource(t *testing.T, socket string, opts workload.Options) *workload.Source {
	t.Helper()
	src, err := workload.NewSource(t.Context(), socket, opts)
	if err != nil {
		t.Fatalf("NewSource(%s): %v", socket, err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// waitFor waits, change by change, until cond holds for src's Current.
// The bound only keeps a broken test from hanging.
func waitFor(t *testing.T, src *workload.Source, what string, cond func(*identity.Material) bool) *identity.Material {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for {
		if m := src.Current(); cond(m) {
			return m
		}
		select {
		case <-src.Changes():
		case <-ctx.Done():
			t.Fatalf("source never showed %s (last refusal: %v)", what, src.Err())
		}
	}
}

func serialIs(c *x509.Certificate) func(*identity.Material) bool {
	return func(m *identity.Material) bool { return m.Certificate.Leaf.SerialNumber.Cmp(c.SerialNumber) == 0 }
}

func TestSourceFirstSVID(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	for _, tc := range []struct {
		name, socket, env string
	}{
		{"unix URI", w.Addr(), ""},
		{"path", w.Path(), ""},
		{"environment", "", w.Addr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(workload.SocketEnv, tc.env)
			src := newSource(t, tc.socket, workload.Options{})
			m := src.Current()
			if got := m.ID.String(); got != centralID {
				t.Errorf("Current().ID = %s, want %s", got, centralID)
			}
			if want := w.SVIDs()[0]; !m.Certificate.Leaf.Equal(want) {
				t.Errorf("Current() leaf serial %x, want the agent's %x", m.Certificate.Leaf.SerialNumber, want.SerialNumber)
			}
			if len(m.Roots) != 1 || !m.Roots[0].Equal(srv.ActiveCA()) {
				t.Errorf("Current().Roots = %d certificates, want the agent's CA", len(m.Roots))
			}
			if _, err := m.Certificate.Leaf.Verify(x509.VerifyOptions{Roots: m.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("leaf does not verify against Pool(): %v", err)
			}
			if src.Addr() != w.Addr() {
				t.Errorf("Addr() = %s, want %s", src.Addr(), w.Addr())
			}
			if err := src.Err(); err != nil {
				t.Errorf("Err() = %v, want nil", err)
			}
		})
	}
}

func TestSourceFollowsSVIDRotation(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	src := newSource(t, w.Addr(), workload.Options{})
	seen := map[string]bool{src.Current().Certificate.Leaf.SerialNumber.String(): true}
	for i := range 3 {
		if err := srv.RotateSVIDs(); err != nil {
			t.Fatal(err)
		}
		want := w.SVIDs()[0]
		m := waitFor(t, src, "the rotated SVID", serialIs(want))
		if seen[m.Certificate.Leaf.SerialNumber.String()] {
			t.Fatalf("rotation %d: serial %x seen before", i, m.Certificate.Leaf.SerialNumber)
		}
		seen[m.Certificate.Leaf.SerialNumber.String()] = true
		if m.ID.String() != centralID {
			t.Errorf("rotation %d: ID = %s, want %s", i, m.ID, centralID)
		}
	}
}

func TestSourceChangesSignalsRotation(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	src := newSource(t, w.Addr(), workload.Options{})
	before := src.Current()
	select {
	case <-src.Changes():
		t.Fatal("Changes() received before any rotation")
	default:
	}
	if err := srv.RotateSVIDs(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-src.Changes():
	case <-time.After(20 * time.Second):
		t.Fatal("Changes() received nothing after a rotation")
	}
	if after := src.Current(); after == before || after.Certificate.Leaf.Equal(before.Certificate.Leaf) {
		t.Error("Current() unchanged after Changes() received")
	}
}

func TestSourceFollowsCARotation(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	src := newSource(t, w.Addr(), workload.Options{})
	oldCA := srv.ActiveCA()

	newCA, err := srv.PrepareCA()
	if err != nil {
		t.Fatal(err)
	}
	m := waitFor(t, src, "both CAs", func(m *identity.Material) bool { return len(m.Roots) == 2 })
	if err := m.Certificate.Leaf.CheckSignatureFrom(oldCA); err != nil {
		t.Errorf("after PrepareCA the SVID is not the old CA's: %v", err)
	}

	if err := srv.ActivateCA(); err != nil {
		t.Fatal(err)
	}
	m = waitFor(t, src, "an SVID of the new CA", func(m *identity.Material) bool {
		return m.Certificate.Leaf.CheckSignatureFrom(newCA) == nil
	})
	if len(m.Roots) != 2 {
		t.Errorf("during the overlap Roots = %d, want 2", len(m.Roots))
	}
	for _, ca := range []*x509.Certificate{oldCA, newCA} {
		if !containsCert(m.Roots, ca) {
			t.Errorf("during the overlap Roots lack CA %s", ca.Subject.CommonName)
		}
	}

	srv.RetireCAs()
	m = waitFor(t, src, "the old CA dropped", func(m *identity.Material) bool { return len(m.Roots) == 1 })
	if !m.Roots[0].Equal(newCA) {
		t.Errorf("after RetireCAs Roots[0] = %s, want the new CA", m.Roots[0].Subject.CommonName)
	}
	if _, err := m.Certificate.Leaf.Verify(x509.VerifyOptions{Roots: m.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("leaf does not verify against the new bundle: %v", err)
	}
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

func TestSourceAgentAbsent(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	unregistered := srv.MustAddWorkload(t) // the agent knows no entry for this caller
	absent := filepath.Join(t.TempDir(), "no-agent.sock")
	for _, tc := range []struct {
		name, socket, wantLast string
	}{
		{"no socket", absent, "no-agent.sock"},
		{"no identity issued", unregistered.Addr(), "no identity issued"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := workload.NewSource(t.Context(), tc.socket, workload.Options{Timeout: 1500 * time.Millisecond})
			if err == nil {
				t.Fatal("NewSource succeeded, want an error")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("NewSource error %q does not wrap context.DeadlineExceeded", err)
			}
			want, _ := workload.ParseSocket(tc.socket)
			if !strings.Contains(err.Error(), want) {
				t.Errorf("NewSource error %q does not name the socket %s", err, want)
			}
			if !strings.Contains(err.Error(), tc.wantLast) {
				t.Errorf("NewSource error %q does not say %q", err, tc.wantLast)
			}
		})
	}
	t.Run("caller's deadline", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := workload.NewSource(ctx, absent, workload.Options{})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("NewSource with a cancelled ctx = %v, want context.Canceled", err)
		}
	})
}

// An agent that hands out an SVID keybroker cannot read as one of its
// identities (a SPIRE entry written for another service, or a typo in the
// registration) must not become the node's identity.
func TestSourceRefusesNonKeybrokerID(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	for _, id := range []string{
		"spiffe://kb.test/web/frontend",
		"spiffe://kb.test/ns/prod/sa/central",
		"spiffe://kb.test/central",
		"spiffe://kb.test/central/c1/extra",
	} {
		t.Run(id, func(t *testing.T) {
			w := srv.MustAddWorkload(t, id)
			src, err := workload.NewSource(t.Context(), w.Addr(), workload.Options{Timeout: 10 * time.Second})
			if err == nil {
				_ = src.Close()
				t.Fatalf("NewSource accepted SVID %s", id)
			}
			if !strings.Contains(err.Error(), "not a keybroker identity") || !strings.Contains(err.Error(), id) {
				t.Errorf("NewSource error %q does not say %s is not a keybroker identity", err, id)
			}
		})
	}
}

// An SVID that does not verify now against the agent's bundle is refused
// at start with the reason, rather than failing in every peer's handshake.
func TestSourceRefusesSVIDThatDoesNotVerify(t *testing.T) {
	for _, tc := range []struct {
		name  string
		shift time.Duration
		want  string
	}{
		{"expired", -3 * time.Hour, "expired"},
		{"not yet valid", 3 * time.Hour, "not yet valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := workloadtest.Start(t, workloadtest.Options{Now: func() time.Time { return time.Now().Add(tc.shift) }})
			w := srv.MustAddWorkload(t, centralID)
			src, err := workload.NewSource(t.Context(), w.Addr(), workload.Options{Timeout: 10 * time.Second})
			if err == nil {
				_ = src.Close()
				t.Fatal("NewSource accepted the SVID")
			}
			if !strings.Contains(err.Error(), "does not verify") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewSource error %q, want it to say the SVID does not verify (%s)", err, tc.want)
			}
		})
	}
}

// A rotation to an unusable SVID is refused and the last good identity
// stays in force; the next good rotation is taken.
func TestSourceKeepsIdentityWhenRotationIsRefused(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	src := newSource(t, w.Addr(), workload.Options{})
	good := src.Current()

	if err := w.SetIDs("spiffe://kb.test/web/frontend"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for src.Err() == nil {
		select {
		case <-ctx.Done():
			t.Fatal("the bad rotation was never refused")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if !strings.Contains(src.Err().Error(), "not a keybroker identity") {
		t.Errorf("Err() = %v, want it to say the SVID is not a keybroker identity", src.Err())
	}
	if src.Current() != good {
		t.Errorf("Current() changed to %s after a refused rotation", src.Current().ID)
	}
	select {
	case <-src.Changes():
		t.Error("Changes() received for a refused rotation")
	default:
	}

	if err := w.SetIDs(centralID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, "the next good SVID", serialIs(w.SVIDs()[0]))
	if err := src.Err(); err != nil {
		t.Errorf("Err() = %v after a good rotation, want nil", err)
	}
}

// An agent whose registration entries change (or that is made to) cannot
// turn a running node into another principal: the id is pinned at start.
func TestSourceRefusesAnotherIDAtRotation(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	src := newSource(t, w.Addr(), workload.Options{})
	good := src.Current()
	for _, other := range []string{clientID, "spiffe://kb.test/admin/root", "spiffe://other.test/central/c1"} {
		if err := w.SetIDs(other); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		for src.Err() == nil || !strings.Contains(src.Err().Error(), other) {
			select {
			case <-ctx.Done():
				t.Fatalf("the rotation to %s was never refused (Err() = %v)", other, src.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
		cancel()
		if !strings.Contains(src.Err().Error(), "not "+centralID+" as at start") {
			t.Errorf("Err() = %v, want it to say the id changed", src.Err())
		}
		if src.Current() != good {
			t.Fatalf("Current() = %s after a rotation to %s, want %s kept", src.Current().ID, other, centralID)
		}
	}
	// A new Source (a restarted process) takes the new id.
	if got := newSource(t, w.Addr(), workload.Options{}).Current().ID.String(); got != "spiffe://other.test/central/c1" {
		t.Errorf("a new Source took %s, want the agent's new id", got)
	}
}

// While the agent is away the last SVID stays in force; when it comes
// back the Source takes its SVIDs again.
func TestSourceSurvivesAgentRestart(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	src := newSource(t, w.Addr(), workload.Options{})
	before := src.Current()

	w.Stop()
	if err := srv.RotateSVIDs(); err != nil { // issued while the agent is away: not seen
		t.Fatal(err)
	}
	if src.Current() != before {
		t.Fatal("Current() changed while the agent was away")
	}
	if err := w.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, "the SVID issued while the agent was away", serialIs(w.SVIDs()[0]))
	if err := srv.RotateSVIDs(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, src, "a rotation after the restart", serialIs(w.SVIDs()[0]))
}

func TestSourcePicksSVIDByID(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, clientID, centralID)

	if got := newSource(t, w.Addr(), workload.Options{}).Current().ID.String(); got != clientID {
		t.Errorf("default SVID = %s, want the first, %s", got, clientID)
	}
	src := newSource(t, w.Addr(), workload.Options{ID: centralID})
	if got := src.Current().ID.String(); got != centralID {
		t.Errorf("SVID picked by ID = %s, want %s", got, centralID)
	}
	if err := srv.RotateSVIDs(); err != nil {
		t.Fatal(err)
	}
	m := waitFor(t, src, "the rotated central SVID", serialIs(w.SVIDs()[1]))
	if m.ID.String() != centralID {
		t.Errorf("after rotation ID = %s, want %s", m.ID, centralID)
	}

	_, err := workload.NewSource(t.Context(), w.Addr(), workload.Options{ID: "spiffe://kb.test/edge/e1", Timeout: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "spiffe://kb.test/edge/e1") || !strings.Contains(err.Error(), centralID) {
		t.Errorf("NewSource for an id the agent does not give = %v, want an error naming it and the ids given", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts workload.Options
		want string
	}{
		{"zero", workload.Options{}, ""},
		{"id", workload.Options{ID: centralID, Timeout: time.Second}, ""},
		{"negative timeout", workload.Options{Timeout: -time.Second}, "negative"},
		{"foreign id", workload.Options{ID: "spiffe://kb.test/web/x"}, "kind"},
		{"not an id", workload.Options{ID: "central/c1"}, "not a spiffe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.Validate()
			if tc.want == "" {
				if err != nil {
					t.Errorf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseSocket(t *testing.T) {
	wd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		socket, env, want, wantErr string
	}{
		{socket: "unix:///run/spire/agent.sock", want: "unix:///run/spire/agent.sock"},
		{socket: "/run/spire/agent.sock", want: "unix:///run/spire/agent.sock"},
		{socket: "agent.sock", want: "unix://" + filepath.Join(wd, "agent.sock")},
		{env: "unix:///tmp/a.sock", want: "unix:///tmp/a.sock"},
		{env: "/tmp/b.sock", want: "unix:///tmp/b.sock"},
		{socket: "/x.sock", env: "unix:///tmp/a.sock", want: "unix:///x.sock"},
		{wantErr: workload.SocketEnv + " is not set"},
		{socket: "tcp://127.0.0.1:8081", wantErr: "only unix sockets"},
		{socket: "http://agent/x", wantErr: "only unix sockets"},
		{socket: "unix://host/path", wantErr: "unix:///absolute/path"},
		{socket: "unix:agent.sock", wantErr: "neither"},
		{socket: "unix:///a.sock?x=1", wantErr: "query"},
		{socket: "/a.sock#frag", wantErr: "neither"},
	} {
		t.Run(tc.socket+"|"+tc.env, func(t *testing.T) {
			t.Setenv(workload.SocketEnv, tc.env)
			got, err := workload.ParseSocket(tc.socket)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("ParseSocket(%q) = %q, %v; want an error containing %q", tc.socket, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseSocket(%q) = %q, %v; want %q", tc.socket, got, err, tc.want)
			}
		})
	}
}

func TestSourceCloseTwice(t *testing.T) {
	srv := workloadtest.Start(t, workloadtest.Options{})
	w := srv.MustAddWorkload(t, centralID)
	src, err := workload.NewSource(t.Context(), w.Addr(), workload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	if src.Current() == nil {
		t.Error("Current() = nil after Close, want the last identity")
	}
}
