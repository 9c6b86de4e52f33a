package scenarios_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
)

// The tiers the central-cluster benchmarks compare: one central node on
// bbolt (the default), one on etcd, and two and three sharing etcd.
var (
	oneBolt   = tier{centrals: 1}
	oneEtcd   = tier{centrals: 1, etcd: true}
	twoEtcd   = tier{centrals: 2, etcd: true}
	threeEtcd = tier{centrals: 3, etcd: true}
)

// BenchmarkPropagationCentrals is BenchmarkPropagation with 50 edges on
// several central tiers in one run: one central node (bbolt, then etcd)
// and three sharing etcd, the edges spread over them (edge i follows
// central node i mod 3). The admin changes the key at the first central
// node, so a third of the edges learn of it from that node's feed and the
// rest from the feeds of the other two, which follow etcd's Watch.
//
//	go test -run '^$' -bench BenchmarkPropagationCentrals -benchtime 30x ./internal/scenarios/
func BenchmarkPropagationCentrals(b *testing.B) {
	for _, t := range []tier{oneBolt, oneEtcd, threeEtcd} {
		b.Run(t.String(), func(b *testing.B) {
			cl := startClusterOn(b, 50, true, t)
			b.Run("rotate", func(b *testing.B) { cl.propagation(b, rotateChange) })
			b.Run("disable", func(b *testing.B) { cl.propagation(b, disableChange) })
		})
	}
}

// missEdges is the number of edges the miss benchmarks spread over the
// central nodes: a multiple of 1, 2 and 3, so that each central node
// serves as many.
const missEdges = 6

// missCallers is the number of concurrent callers (4 per core on 2 cores:
// b.SetParallelism multiplies GOMAXPROCS).
const missCallers = 4

// BenchmarkMissThroughput measures how many misses the central tier
// answers a second with one, two and three central nodes (on etcd; one on
// bbolt for reference), on this one machine: six edges that do not
// prefetch, spread evenly over the central nodes, and 8 callers at the
// edges in turn.
//
//   - FetchMaterial: one op is an Encrypt at an edge under a key that edge
//     has not used, so the edge fetches its material from its central
//     node (FetchMaterial), which derives it once per key and central
//     node (its root of trust) and holds it after. The keys are created
//     before the timer starts, enough for every op.
//   - Sign: one op is a Sign at an edge with a backend-mode ECDSA P-256
//     key, which the edge cannot serve: it forwards the call, with the
//     client's forward proof, to its central node, which signs with the
//     root of trust. With etcd, the proof's nonce is claimed tier-wide
//     (one etcd write per call). Each edge's caller is an application of
//     its own, so that the budget of root-of-trust calls per principal
//     does not bound the rate.
//
// Besides ns/op it reports the CPU time, per op, of this process (client,
// edges and central nodes together: cpu-µs/op) and of the etcd member
// (etcd-cpu-µs/op), to tell what bounds the rate on two cores.
//
//	go test -run '^$' -bench BenchmarkMissThroughput -benchtime 2000x ./internal/scenarios/
func BenchmarkMissThroughput(b *testing.B) {
	for _, t := range []tier{oneBolt, oneEtcd, twoEtcd, threeEtcd} {
		b.Run(t.String(), func(b *testing.B) {
			cl := startClusterOn(b, missEdges, false, t)
			b.Run("FetchMaterial", func(b *testing.B) {
				ctx := b.Context()
				// One key per missEdges ops: each op is a first use at
				// its edge.
				keys := make([]string, b.N/missEdges+1)
				var rev uint64
				for i := range keys {
					keys[i] = fmt.Sprintf("miss-%d", keySeq.Add(1))
					md, err := cl.admins[i%len(cl.admins)].CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: keys[i],
						Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
					if err != nil {
						b.Fatal(err)
					}
					rev = max(rev, md.GetRevision())
				}
				if err := cl.waitApplied(ctx, rev, nil); err != nil {
					b.Fatal(err)
				}
				var next atomic.Int64
				cl.throughput(b, func(ctx context.Context) error {
					i := int(next.Add(1) - 1)
					_, err := cl.edges[i%missEdges].Encrypt(ctx, &kbv1.EncryptRequest{KeyId: keys[i/missEdges], Plaintext: plaintext})
					return err
				})
			})
			b.Run("Sign", func(b *testing.B) {
				ctx := b.Context()
				id := fmt.Sprintf("sign-%d", keySeq.Add(1))
				var root string // the softkms keystore's ECDSA root key
				for _, k := range cl.c.RootKeys() {
					if k.Role == "backend" {
						root = k.URI
					}
				}
				md, err := cl.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id,
					Type: kbv1.KeyType_KEY_TYPE_ECDSA_P256, Mode: kbv1.KeyMode_KEY_MODE_BACKEND, RootKey: root})
				if err != nil {
					b.Fatal(err)
				}
				if err := cl.waitApplied(ctx, md.GetRevision(), nil); err != nil {
					b.Fatal(err)
				}
				// The SDK, pinned to each edge: it signs the forward proof
				// the central tier asks for. One application identity per
				// edge, so that the central tier's budget of root-of-trust
				// calls per principal (500/s by default, at each central
				// node) does not bound the run.
				sdks := make([]*client.Client, missEdges)
				for i, e := range cl.c.Edges {
					app, err := cl.c.IssueFiles(identity.Client, fmt.Sprintf("signer-%d", i), b.TempDir())
					if err != nil {
						b.Fatal(err)
					}
					if sdks[i], err = client.New(ctx, client.Config{Addrs: []string{e.Addr()}, Direct: true,
						CAFile: app.CA, CertFile: app.Cert, KeyFile: app.Key, Getenv: func(string) string { return "" }}); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { sdks[i].Close() })
				}
				digest := sha256.Sum256([]byte("keybroker"))
				var next atomic.Int64
				cl.throughput(b, func(ctx context.Context) error {
					i := int(next.Add(1) - 1)
					_, err := sdks[i%missEdges].SignDigest(ctx, id, digest[:])
					return err
				})
			})
		})
	}
}

// throughput runs op b.N times from missCallers callers per GOMAXPROCS
// and reports the CPU it cost per op, here and in etcd.
func (cl *cluster) throughput(b *testing.B, op func(context.Context) error) {
	ctx := b.Context()
	var etcdPid int
	if m := cl.c.EtcdMember(); m != nil {
		etcdPid = m.Pid()
	}
	cpu0, etcd0 := selfCPU(), procCPU(etcdPid)
	b.SetParallelism(missCallers)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	perOp := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(b.N) }
	b.ReportMetric(perOp(selfCPU()-cpu0), "cpu-µs/op")
	if etcdPid != 0 {
		b.ReportMetric(perOp(procCPU(etcdPid)-etcd0), "etcd-cpu-µs/op")
	}
}

// selfCPU is this process's user and system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the user and system CPU time of process pid so far, read
// from /proc (0 when unknown).
func procCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// BenchmarkCreateKeyStore measures CreateKey through KeyAdmin, over gRPC
// with mutual TLS, from 8 concurrent admin callers (4 per core), with the
// registry in bbolt and in etcd (one member on loopback), and on three
// central nodes sharing etcd with the callers spread over them. One op is
// one derive-mode AES-256-GCM key created; ns/op is the inverse of the
// tier's rate.
//
//	go test -run '^$' -bench BenchmarkCreateKeyStore -benchtime 2000x ./internal/scenarios/
func BenchmarkCreateKeyStore(b *testing.B) {
	for _, t := range []tier{oneBolt, oneEtcd, threeEtcd} {
		b.Run(t.String(), func(b *testing.B) {
			cl := startClusterOn(b, 0, false, t)
			var next atomic.Int64
			cl.throughput(b, func(ctx context.Context) error {
				i := next.Add(1)
				_, err := cl.admins[int(i)%len(cl.admins)].CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: fmt.Sprintf("create-%d", i),
					Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM, Mode: kbv1.KeyMode_KEY_MODE_DERIVE})
				return err
			})
		})
	}
}
