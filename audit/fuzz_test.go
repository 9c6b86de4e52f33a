package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fuzzLog writes a real log of n records with fixed times (so that every
// run builds the same bytes) and returns it with its head file.
func fuzzLog(tb testing.TB, dir string, n int) (log, head []byte) {
	tb.Helper()
	path := filepath.Join(dir, fmt.Sprintf("seed-%d.jsonl", n))
	l, err := Open(path, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		r := Record{Time: time.Unix(1_700_000_000+int64(i), 0).UTC(), RequestID: fmt.Sprintf("req-%d", i), Principal: "spiffe://kb.test/client/app",
			Node: "central-1", Operation: "Decrypt", Key: "payments", Version: 2, Decision: "allow", PolicyID: "app-payments", Backend: "softkms",
			Outcome: "ok"}
		switch i % 3 {
		case 1:
			r.Decision, r.PolicyID, r.Outcome, r.Detail = "deny", "default-deny", "PermissionDenied", "spiffe://kb.test/client/app may not Decrypt key payments"
		case 2:
			r.Via, r.BackendCalls, r.BackendCallsDropped = "edge-eu-1", []string{"softkms:derive", "softkms:unwrap-data-key"}, 3
		}
		if err := l.Append(r); err != nil {
			tb.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		tb.Fatal(err)
	}
	log, err = os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	head, err = os.ReadFile(headOf(path))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		tb.Fatal(err)
	}
	return log, head
}

// records decodes a log's lines as Verify does: the first JSON value of
// each line.
func records(tb testing.TB, log []byte) []Record {
	tb.Helper()
	var out []Record
	for line := range bytes.Lines(log) {
		var r Record
		if err := json.NewDecoder(bytes.NewReader(line)).Decode(&r); err != nil {
			tb.Fatalf("a verified line does not decode: %v", err)
		}
		out = append(out, r)
	}
	return out
}

// FuzzVerify checks the audit chain verifier on any log and head file: no
// panic; refusals are a *VerifyError or a malformed head file; a log that
// verifies has as many records as lines, ends at the hash of its last
// line, and is one Open continues (an Append after it verifies again).
// For a log that verifies, a one-bit change to a byte is refused or
// leaves the records as they were (without a head file, it may also drop
// records from the end, which only the head file detects): the chain
// authenticates what the records say.
//
// It does not require that a verified line be byte for byte the writer's
// encoding: Verify hashes the record it decodes from the first JSON value
// of a line, so a change to the JSON form that decodes to the same record,
// or bytes after that value, are not detected; the fuzzing report that
// added this target describes them.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	for _, n := range []int{0, 1, 3} {
		log, head := fuzzLog(f, dir, n)
		f.Add(log, head)
		f.Add(log, []byte(nil))
		if n > 0 {
			f.Add(log[:len(log)-1], head)
			f.Add(bytes.Replace(log, []byte(`"seq":1`), []byte(`"seq":2`), 1), []byte(nil))
			f.Add(bytes.Replace(log, []byte(`"outcome":"ok"`), []byte(`"outcome":"OK"`), 1), head)
		}
	}
	// Lines that verify though they are not what the writer wrote: a value
	// after the record, a repeated field, a field name in another case.
	log, head := fuzzLog(f, dir, 2)
	lines := bytes.SplitAfter(log, []byte("\n"))
	f.Add(slices.Concat(lines[0], bytes.TrimSuffix(lines[1], []byte("\n")), []byte(` {"operation":"CreateKey","outcome":"ok"}`+"\n")), head)
	f.Add(bytes.Replace(log, []byte(`{"time"`), []byte(`{"key":"forged","time"`), 1), head)
	f.Add(bytes.Replace(log, []byte(`"key":`), []byte(`"KEY":`), 1), head)
	f.Add([]byte("{}\n"), []byte("1 "+strings.Repeat("0", 64)+"\n"))
	f.Add([]byte("\n"), []byte("x y z"))
	headPath := filepath.Join(dir, "fuzz.head")
	f.Fuzz(func(t *testing.T, log, head []byte) {
		hp := ""
		if len(head) > 0 {
			hp = headPath
			if err := os.WriteFile(hp, head, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		res, verr := Verify(bytes.NewReader(log), hp)
		if verr != nil {
			var ve *VerifyError
			if !errors.As(verr, &ve) && !strings.Contains(verr.Error(), "head file") {
				t.Fatalf("Verify error %v (%T) is neither a VerifyError nor a malformed head file", verr, verr)
			}
			// Open checks only the log's end: it may continue a log
			// Verify refuses, but its background pass must then not
			// find the log verified.
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			if err := os.WriteFile(path, log, 0o600); err != nil {
				t.Fatal(err)
			}
			if hp != "" {
				if err := os.WriteFile(headOf(path), head, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			l, err := Open(path, time.Hour)
			if err != nil {
				return
			}
			<-l.CheckDone()
			c := l.Check()
			l.Close()
			if c.State != Broken {
				t.Fatalf("Open continued a log Verify refuses (%v) and its background pass found it %v", verr, c.State)
			}
			return
		}
		recs := records(t, log)
		if res.Lines != uint64(len(recs)) || uint64(bytes.Count(log, []byte("\n"))) != res.Lines {
			t.Fatalf("Verify counted %d lines; the log has %d records and %d newlines", res.Lines, len(recs), bytes.Count(log, []byte("\n")))
		}
		want := zeroHash
		if len(recs) > 0 {
			want = recs[len(recs)-1].Hash
		}
		if res.LastHash != want {
			t.Fatalf("Verify ends at %s, the last line's hash is %s", res.LastHash, want)
		}
		// At most 512 changes per input: every byte of a short log, evenly
		// spread over a longer one.
		for i := 0; i < len(log); i += max(1, len(log)/512) {
			// One bit per byte, all eight across positions; letters change
			// case, which JSON field names ignore.
			bit := byte(1) << (i % 8)
			if c := log[i] | 0x20; 'a' <= c && c <= 'z' {
				bit = 0x20
			}
			bad := bytes.Clone(log)
			bad[i] ^= bit
			if _, err := Verify(bytes.NewReader(bad), hp); err != nil {
				continue
			}
			after, want := records(t, bad), recs
			if hp == "" && len(after) < len(recs) {
				want = recs[:len(after)] // records dropped from the end
			}
			if diff := cmp.Diff(want, after); diff != "" {
				t.Fatalf("byte %d changed (^%#x), the log still verifies with other records (-before +after):\n%s", i, bit, diff)
			}
		}
		// Open continues a verified chain with its head, and refuses one
		// with lines but no head.
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		if err := os.WriteFile(path, log, 0o600); err != nil {
			t.Fatal(err)
		}
		if hp != "" {
			if err := os.WriteFile(headOf(path), head, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		l, err := Open(path, time.Hour)
		if hp == "" && len(log) > 0 {
			if err == nil {
				l.Close()
				t.Fatal("Open continued a log with lines and no head file")
			}
			return
		}
		if err != nil {
			t.Fatalf("Open refuses a log that verifies: %v", err)
		}
		if err := l.Append(Record{Operation: "Encrypt", Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if res2, err := VerifyFile(path); err != nil || res2.Lines != res.Lines+1 {
			t.Fatalf("after one Append the log verifies to %d lines, %v; want %d", res2.Lines, err, res.Lines+1)
		}
	})
}
