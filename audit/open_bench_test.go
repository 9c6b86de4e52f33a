package audit

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// typicalRecord is the i-th line of a log shaped like a central's at scale:
// mostly HoldMaterial lines (one per key per snapshot sealed to an edge,
// as broker/server's watch.go writes them) among CreateKey lines (as the
// pipeline writes them), 330 to 400 bytes each.
func typicalRecord(i int) Record {
	t := time.Date(2026, 12, 7, 16, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Millisecond)
	rid := fmt.Sprintf("%024x", uint64(i)*0x9e3779b97f4a7c15)
	key := fmt.Sprintf("tenant-%07d", i/3)
	if i%3 == 0 {
		return Record{Time: t, RequestID: rid, Principal: "spiffe://example.org/admin/provisioner", Node: "central-1",
			Operation: "CreateKey", Key: key, Version: 1, Decision: Allow, PolicyID: "admins-manage-keys", Backend: "softkms",
			BackendCalls: []string{"softkms:Derive"}, Outcome: "ok"}
	}
	return Record{Time: t, RequestID: rid, Principal: "spiffe://example.org/edge/edge-eu-1", Node: "central-1",
		Operation: "HoldMaterial", Key: key, Version: 1, Decision: Allow, PolicyID: "edges-hold-material", Outcome: "ok",
		Detail: "sealed to the edge by Watch"}
}

// buildLog writes a log of n typical lines and its head (with key, if
// any) straight to path, as a Log would have written them, without a
// write(2) per line. It returns the last line's hash.
func buildLog(tb testing.TB, path string, n int, key []byte) string {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	seq, prev := uint64(0), zeroHash
	for i := range n {
		r := typicalRecord(i)
		line, err := seal(&r, seq+1, prev)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := w.Write(line); err != nil {
			tb.Fatal(err)
		}
		seq, prev = seq+1, r.Hash
	}
	if err := errors.Join(w.Flush(), f.Close(), writeHead(headOf(path), seq, prev, key)); err != nil {
		tb.Fatal(err)
	}
	return prev
}

// BenchmarkOpen opens (and closes) logs of typical lines: the time to
// continue a log at start. Verify is what Open did before it checked only
// the log's end, and what the background pass does now.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		path := filepath.Join(b.TempDir(), "audit.jsonl")
		buildLog(b, path, n, nil)
		st, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("lines=%d/Open", n), func(b *testing.B) {
			for b.Loop() {
				l, err := Open(path, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				if err := l.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(st.Size())/float64(n), "B/line")
		})
		b.Run(fmt.Sprintf("lines=%d/Verify", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := VerifyFile(path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
