package e2e

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// Phases of a network fault, as the workers see them.
const (
	netUp       = iota // before the fault
	netCut             // the fault is on; the edge may serve within its window
	netRefusing        // the test has seen the edge refuse: it must keep refusing
	netRestored        // the network is back; the edge recovers
)

// netLease and netStaleness are the edge's lease (edge clusters' 2s) and
// edge-cut's max_staleness: no heartbeat sent after a fault began can reach
// the edge, so whatever lease it holds ends by the fault's start plus
// netLease, and it must refuse from then plus netStaleness on.
const (
	netLease     = 2 * time.Second
	netStaleness = 3 * time.Second
)

// staleRefusal says whether err is the edge's refusal to serve past
// max_staleness.
func staleRefusal(err error) bool {
	return status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "max_staleness")
}

// TestFaultNetworkCut puts a loopback TCP proxy between an edge and
// central (lease 2s, the edge's max_staleness 3s) and breaks it twice
// under load: first as a reset (every connection closed, new ones
// refused), then as a silent stall (no byte moves either way, nothing is
// closed). Each time the edge must keep serving placed keys within its
// window, then refuse every operation with Unavailable naming
// max_staleness — never serving past it — and serve again once the
// network is back. A second edge on a direct link serves throughout.
func TestFaultNetworkCut(t *testing.T) {
	rep := framework.NewFaultReport(t, "network-cut")
	c := framework.NewProcesses(t)
	proxy := framework.NewProxy(t, c.Central.Addr)
	c.AddEdge(t, &framework.EdgeNode{Name: "edge-cut", Region: "eu", Prefetch: true, Staleness: netStaleness, Via: proxy.Addr()})
	c.AddEdge(t, &framework.EdgeNode{Name: "edge-direct", Region: "eu", Prefetch: true, Staleness: netStaleness})
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	aes := kbv1.KeyType_KEY_TYPE_AES_256_GCM
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "placed", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner, Placement: "true"},
		{KeyId: "hsm", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_BACKEND, Labels: owner},
	} {
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)
	cut := c.Dial(t, c.Edges["edge-cut"].Proc.Addr, identity.Client, "app")
	direct := c.Dial(t, c.Edges["edge-direct"].Proc.Addr, identity.Client, "app")

	var lines []string
	directOps := 0
	for _, fault := range []struct {
		name   string
		inject func()
	}{
		{"reset", proxy.Cut},
		{"stall", proxy.Stall},
	} {
		var phase atomic.Int32
		// closes is when the edge's window must have closed: the fault in
		// place plus the longest lease a heartbeat sent before it grants,
		// plus max_staleness. The test sees the edge refuse first, then
		// demands refusals; a heartbeat sent just before the fault but
		// applied after that first refusal (a slow disk write) may still
		// open the window until closes, and no later.
		var closes atomic.Int64
		var served, servedCut, refused, refusedAfter, servedLate atomic.Int64
		var directServed atomic.Int64
		l := framework.StartLoad(ctx, 4, func(ctx context.Context, w, i int) error {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			pt := fmt.Appendf(nil, "worker %d op %d", w, i)
			ectx := map[string]string{"worker": strconv.Itoa(w)}
			if w == 3 { // the control: an edge on a direct link
				_, err := faultRoundTrip(ctx, direct, direct, "placed", pt, ectx)
				if err == nil {
					directServed.Add(1)
				}
				return err
			}
			at := phase.Load()
			began := time.Now()
			_, err := faultRoundTrip(ctx, cut, cut, "placed", pt, ectx)
			// A call still in flight when the network came back may be
			// served on a lease granted since: only one that began and
			// ended while the edge had to refuse proves a violation.
			refusing := at == netRefusing && phase.Load() == netRefusing
			switch {
			case err == nil && refusing && began.UnixNano() > closes.Load():
				return errors.New("served past lease + max_staleness")
			case err == nil && at == netRefusing:
				servedLate.Add(1) // a heartbeat from before the fault applied late, or a call in flight as the network came back
			case err == nil:
				served.Add(1)
				if at == netCut {
					servedCut.Add(1)
				}
			case staleRefusal(err) && at != netUp:
				refused.Add(1)
				if at == netRefusing {
					refusedAfter.Add(1)
				}
			default:
				return err
			}
			return nil
		})
		l.WaitOps(t, 100)

		// The window is measured from when the fault is in place: a
		// heartbeat the central sent while inject was still taking hold
		// (a loaded machine) grants a lease from then, not from before.
		fault.inject()
		closes.Store(time.Now().Add(netLease + netStaleness).UnixNano())
		phase.Store(netCut)
		forwarded := "not tried"
		if fault.name == "reset" {
			// A call only central can answer fails fast while the
			// edge still serves what it holds.
			if err := framework.FailsFast(ctx, func(ctx context.Context) error {
				_, err := cut.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "hsm", Plaintext: []byte("x")})
				return err
			}); err != nil {
				t.Errorf("%s: Encrypt with a backend-mode key at the cut-off edge: %v", fault.name, err)
			}
			forwarded = "failed fast with Unavailable"
		}
		framework.Poll(t, fault.name+": the cut-off edge refuses past lease + max_staleness", func() (bool, string) {
			_, err := cut.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "placed", Plaintext: []byte("x")})
			return staleRefusal(err), fmt.Sprint(err)
		})
		phase.Store(netRefusing)
		framework.Poll(t, fault.name+": refusals after the window closed", func() (bool, string) {
			return refusedAfter.Load() >= 20, fmt.Sprintf("%d refusals", refusedAfter.Load())
		})
		connectedCut := "central saw the stream end"
		if ok, _ := c.Connected(ctx, "edge-cut"); ok {
			connectedCut = "central still listed the edge connected"
			if fault.name == "reset" {
				t.Errorf("reset: central lists edge-cut as connected while its connections are refused")
			}
		}

		// The phase moves first: a call that ends with the edge still
		// refusing (phase unchanged) was answered before the network came
		// back.
		phase.Store(netRestored)
		proxy.Restore()
		framework.Poll(t, fault.name+": the edge serves again once the network is back", func() (bool, string) {
			_, err := faultRoundTrip(ctx, cut, cut, "placed", []byte("back"), nil)
			return err == nil, fmt.Sprint(err)
		})
		framework.Poll(t, fault.name+": central lists the edge connected", func() (bool, string) {
			return c.Connected(ctx, "edge-cut", "edge-direct")
		})
		servedBefore := served.Load()
		framework.Poll(t, fault.name+": the load served again", func() (bool, string) {
			return served.Load() >= servedBefore+100, fmt.Sprintf("%d served", served.Load()-servedBefore)
		})
		first := l.Stop()
		if n := l.Errs.Load(); n != 0 {
			t.Fatalf("%s: %d unexpected outcomes in %d operations; first: %v", fault.name, n, l.Ops.Load(), errors.Join(first...))
		}
		if servedCut.Load() == 0 {
			t.Errorf("%s: the edge served nothing between the cut and the end of its window", fault.name)
		}
		directOps += int(directServed.Load())
		line := fmt.Sprintf("%s: %d operations served after the cut within the window, then %d refused with Unavailable naming max_staleness (0 served past it), %s; forwarded call %s; served again after restore",
			fault.name, servedCut.Load(), refused.Load(), connectedCut, forwarded)
		if fault.name == "reset" {
			line += fmt.Sprintf(" (%d reconnections refused meanwhile)", proxy.Refusals())
		}
		if n := servedLate.Load(); n > 0 {
			line += fmt.Sprintf("; %d served after a first refusal, within the window a heartbeat sent before the fault still held or in flight as the network came back", n)
		}
		t.Log(line)
		lines = append(lines, line)
	}
	rep.Set("edge behind a TCP proxy, lease 2s + max_staleness 3s, 3 workers on it and 1 on an edge with a direct link; %s; the direct edge served %d operations with 0 errors",
		strings.Join(lines, "; "), directOps)
}
