package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func writeLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := l.Append(Record{RequestID: fmt.Sprintf("req-%d", i), Principal: "spiffe://kb/client/app", Operation: "Encrypt",
			Key: "payments", Version: 1, Decision: "allow", PolicyID: "policy0", Backend: "softkms", Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func lines(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
}

func rewrite(t *testing.T, path string, ls [][]byte) {
	t.Helper()
	var buf bytes.Buffer
	for _, l := range ls {
		buf.Write(bytes.TrimSuffix(l, []byte("\n")))
		buf.WriteByte('\n')
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyGood(t *testing.T) {
	path := writeLog(t, 50)
	res, err := VerifyFile(path)
	if err != nil {
		t.Fatalf("VerifyFile = %v", err)
	}
	if res.Lines != 50 || !res.HeadSeen {
		t.Errorf("VerifyFile = %+v, want 50 lines and the head seen", res)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func([][]byte) [][]byte
		want   string
	}{
		{"edited field", func(ls [][]byte) [][]byte {
			ls[10] = bytes.Replace(ls[10], []byte(`"decision":"allow"`), []byte(`"decision":"deny"`), 1)
			return ls
		}, "hash mismatch"},
		{"edited key", func(ls [][]byte) [][]byte {
			ls[3] = bytes.Replace(ls[3], []byte(`"payments"`), []byte(`"refunds"`), 1)
			return ls
		}, "hash mismatch"},
		{"dropped middle line", func(ls [][]byte) [][]byte { return append(ls[:5:5], ls[6:]...) }, "sequence"},
		{"dropped first line", func(ls [][]byte) [][]byte { return ls[1:] }, "sequence"},
		{"reordered", func(ls [][]byte) [][]byte { ls[7], ls[8] = ls[8], ls[7]; return ls }, "sequence"},
		{"duplicated", func(ls [][]byte) [][]byte { return append(ls[:9:9], ls[8:]...) }, "sequence"},
		{"dropped last line", func(ls [][]byte) [][]byte { return ls[:len(ls)-1] }, "dropped from the end"},
		{"garbage line", func(ls [][]byte) [][]byte { ls[2] = []byte("not json"); return ls }, "not an audit record"},
		{"a record appended after the record", func(ls [][]byte) [][]byte {
			ls[4] = append(bytes.TrimSuffix(ls[4], []byte("\n")), ` {"operation":"CreateKey","principal":"spiffe://kb/admin/mallory","outcome":"ok"}`...)
			return ls
		}, "not as the writer writes"},
		{"a repeated field ahead of the real one", func(ls [][]byte) [][]byte {
			ls[6] = bytes.Replace(ls[6], []byte(`{"time"`), []byte(`{"key":"forged","time"`), 1)
			return ls
		}, "not as the writer writes"},
		{"a field name in another case", func(ls [][]byte) [][]byte {
			ls[7] = bytes.Replace(ls[7], []byte(`"key":`), []byte(`"KEY":`), 1)
			return ls
		}, "not as the writer writes"},
		{"renumbered after drop", func(ls [][]byte) [][]byte {
			ls = append(ls[:5:5], ls[6:]...)
			for i := 5; i < len(ls); i++ {
				ls[i] = bytes.Replace(ls[i], fmt.Appendf(nil, `"seq":%d,`, i+2), fmt.Appendf(nil, `"seq":%d,`, i+1), 1)
			}
			return ls
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLog(t, 20)
			rewrite(t, path, tc.tamper(lines(t, path)))
			_, err := VerifyFile(path)
			var ve *VerifyError
			if err == nil || (!errors.As(err, &ve) && tc.want != "") {
				t.Fatalf("VerifyFile after %s = %v, want a VerifyError", tc.name, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("VerifyFile error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestReopenContinuesChain(t *testing.T) {
	path := writeLog(t, 5)
	l, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Operation: "Decrypt", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	res, err := VerifyFile(path)
	if err != nil || res.Lines != 6 {
		t.Errorf("after reopen: %+v, %v; want 6 verified lines", res, err)
	}
}

func TestConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := range 50 {
				if err := l.Append(Record{Operation: "Encrypt", RequestID: fmt.Sprintf("%d-%d", w, i), Outcome: "ok"}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Operation: "x"}); err == nil {
		t.Error("Append after Close succeeded")
	}
	res, err := VerifyFile(path)
	if err != nil || res.Lines != 800 {
		t.Errorf("VerifyFile = %+v, %v; want 800 lines", res, err)
	}
}

func TestIncompleteLastLine(t *testing.T) {
	path := writeLog(t, 3)
	data, _ := os.ReadFile(path)
	os.WriteFile(path, data[:len(data)-10], 0o600)
	if _, err := VerifyFile(path); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("VerifyFile(cut) = %v, want incomplete last line", err)
	}
}

func BenchmarkAppend(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.jsonl"), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	r := Record{RequestID: "req-0123456789", Principal: "spiffe://kb/client/app", Operation: "Encrypt", Key: "payments",
		Version: 1, Decision: "allow", PolicyID: "policy0", Backend: "softkms", Outcome: "ok"}
	for b.Loop() {
		if err := l.Append(r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAppendReturnsOnceWritten checks the group commit's promise: when
// Append returns, its line is in the file, whoever wrote it.
func TestAppendReturnsOnceWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 20 {
				id := fmt.Sprintf(`"request_id":"w%d-%d"`, w, i)
				if err := l.Append(Record{Operation: "Encrypt", RequestID: id[len(`"request_id":"`) : len(id)-1], Outcome: "ok"}); err != nil {
					t.Error(err)
					return
				}
				data, err := os.ReadFile(path)
				if err != nil || !bytes.Contains(data, []byte(id)) {
					t.Errorf("Append of %s returned before its line was written (%v)", id, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestLineFormat checks a line against the format's definition without
// the package's own encoder: hash = SHA-256(prev ‖ "\n" ‖ body), where body
// is json.Marshal of the record with the hash empty.
func TestLineFormat(t *testing.T) {
	path := writeLog(t, 3)
	prev := zeroHash
	for i, line := range lines(t, path) {
		var rec Record
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatal(err)
		}
		hash := rec.Hash
		rec.Hash = ""
		body, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(append([]byte(prev+"\n"), body...))
		if got := hex.EncodeToString(sum[:]); got != hash || rec.Prev != prev || rec.Seq != uint64(i+1) {
			t.Errorf("line %d: hash %s prev %s seq %d; want %s, %s, %d", i+1, hash, rec.Prev, rec.Seq, got, prev, i+1)
		}
		want, _ := json.Marshal(Record{Time: rec.Time, RequestID: rec.RequestID, Principal: rec.Principal, Operation: rec.Operation,
			Key: rec.Key, Version: rec.Version, Decision: rec.Decision, PolicyID: rec.PolicyID, Backend: rec.Backend,
			Outcome: rec.Outcome, Seq: rec.Seq, Prev: rec.Prev, Hash: hash})
		if !bytes.Equal(bytes.TrimSuffix(line, []byte("\n")), want) {
			t.Errorf("line %d is\n%s\nwant json.Marshal's\n%s", i+1, line, want)
		}
		prev = hash
	}
}

// TestWriteFailureIsSticky: once a write fails, that Append and every
// later one fail, and nothing claims to be written that was not.
func TestWriteFailureIsSticky(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Operation: "Encrypt", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.f.Close() // the next write fails
	for range 3 {
		if err := l.Append(Record{Operation: "Encrypt", Outcome: "ok"}); err == nil {
			t.Fatal("Append to a closed file succeeded")
		}
	}
	if res, err := VerifyFile(path); err != nil || res.Lines != 1 {
		t.Errorf("VerifyFile = %+v, %v; want the one line written", res, err)
	}
}

func BenchmarkAppendParallel(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.jsonl"), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	r := Record{RequestID: "req-0123456789", Principal: "spiffe://kb/client/app", Operation: "Encrypt", Key: "payments",
		Version: 1, Decision: "allow", PolicyID: "policy0", Backend: "softkms", Outcome: "ok"}
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Append(r); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// TestPrefixMatchesJSON checks the hand-written encoding against
// json.Marshal on records with every field set or empty and strings that
// need escaping (where it must decline and the fallback take over).
func TestPrefixMatchesJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func() string {
		return []string{"", "ok", "spiffe://kb/client/app", `quote " and \ back`, "<html>&", "tab\there", "ünïcödé", "\u2028", "\xff\xfe"}[rng.IntN(9)]
	}
	zones := []*time.Location{time.UTC, time.FixedZone("plus", 5*3600+30*60), time.FixedZone("odd", 17)}
	for i := range 2000 {
		r := Record{Time: time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).In(zones[rng.IntN(3)]), RequestID: pick(), ClientRequestID: pick(), Principal: pick(),
			Node: pick(), Operation: Operation(pick()), Key: pick(), Version: uint32(rng.IntN(3)), Decision: Decision(pick()), PolicyID: pick(),
			Backend: pick(), Via: pick(), BackendCallsDropped: rng.IntN(2) * rng.IntN(20), Outcome: pick(), Detail: pick()}
		for range rng.IntN(3) {
			r.BackendCalls = append(r.BackendCalls, pick())
		}
		full, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		want := bytes.TrimSuffix(full, []byte(chainTail))
		got, err := encodePrefix(&r)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("record %d %+v:\nencodePrefix = %s (%v)\njson.Marshal  %s", i, r, got, err, want)
		}
	}
}
