package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeKeyedLog(t *testing.T, key []byte, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := OpenConfig(Config{Path: path, HeadKey: key})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := l.Append(Record{RequestID: fmt.Sprintf("req-%d", i), Operation: "Encrypt", Outcome: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// dropLastLine is the attack: cut the last line off and write a head that
// matches what is left, as an attacker who can write the directory but
// lacks the head key would.
func dropLastLine(t *testing.T, path string, head func(seq uint64, hash string) string) {
	t.Helper()
	ls := lines(t, path)
	ls = ls[:len(ls)-1]
	rewrite(t, path, ls)
	var last Record
	if err := json.Unmarshal(ls[len(ls)-1], &last); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(headOf(path), []byte(head(last.Seq, last.Hash)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestHeadKeyCatchesTruncation: with a head key, dropping the last line and
// rewriting the head is detected by Verify and by Open; without one it is
// not (the documented limit).
func TestHeadKeyCatchesTruncation(t *testing.T) {
	key := bytes.Repeat([]byte("h"), 32)
	good := writeKeyedLog(t, key, 5)
	res, err := VerifyFileWithKey(good, key)
	if err != nil || res.Lines != 5 || !res.HeadSeen || !res.HeadAuthenticated {
		t.Fatalf("VerifyFileWithKey(untouched) = %+v, %v; want 5 lines, head seen and authenticated", res, err)
	}
	for _, tc := range []struct {
		name string
		head func(seq uint64, hash string) string
	}{
		{"head without a MAC", func(seq uint64, hash string) string { return fmt.Sprintf("%d %s\n", seq, hash) }},
		{"head under another key", func(seq uint64, hash string) string {
			return fmt.Sprintf("%d %s %s\n", seq, hash, headMAC(bytes.Repeat([]byte("x"), 32), seq, hash))
		}},
		{"head with the old MAC", func(seq uint64, hash string) string {
			return fmt.Sprintf("%d %s %s\n", seq, hash, strings.Repeat("ab", 32))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeKeyedLog(t, key, 5)
			dropLastLine(t, path, tc.head)
			if _, err := VerifyFileWithKey(path, key); err == nil || !strings.Contains(err.Error(), "head file") {
				t.Errorf("VerifyFileWithKey(truncated) = %v, want a head file error", err)
			}
			if l, err := OpenConfig(Config{Path: path, HeadKey: key}); err == nil {
				l.Close()
				t.Error("OpenConfig continued a truncated log with a forged head")
			}
		})
	}
	// Without the key the forged plain head verifies: the limit the
	// package doc states.
	plain := writeLog(t, 5)
	dropLastLine(t, plain, func(seq uint64, hash string) string { return fmt.Sprintf("%d %s\n", seq, hash) })
	if _, err := VerifyFile(plain); err != nil {
		t.Errorf("VerifyFile(truncated, plain head rewritten) = %v; the unkeyed head was expected not to catch it", err)
	}
	// A head key must be long enough, and is then required.
	if _, err := OpenConfig(Config{Path: filepath.Join(t.TempDir(), "a"), HeadKey: []byte("short")}); err == nil {
		t.Error("OpenConfig accepted a 5-byte head key")
	}
	if err := os.Remove(headOf(good)); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyFileWithKey(good, key); err == nil {
		t.Error("VerifyFileWithKey accepted a log whose head is missing")
	}
}

// TestOpenRefusesMissingHead: a log with lines and no head is not
// continued; a new log gets its head at once.
func TestOpenRefusesMissingHead(t *testing.T) {
	path := writeLog(t, 3)
	if err := os.Remove(headOf(path)); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, 0)
	if err == nil {
		l.Close()
		t.Fatal("Open continued a log whose head file is missing")
	}
	for _, want := range []string{"no head file", "start a new log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open error %q does not say %q", err, want)
		}
	}
	// The log is left as it was.
	if n := len(lines(t, path)); n != 3 {
		t.Errorf("the refused log has %d lines, want 3", n)
	}

	fresh := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err = Open(fresh, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(headOf(fresh)); err != nil {
		t.Errorf("a new log has no head before its first sync: %v", err)
	}
	if err := l.Append(Record{Operation: "Encrypt", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	// A crash before the first sync leaves the first head, which the
	// next Open accepts.
	close(l.stop)
	<-l.done
	l.f.Close()
	l2, err := Open(fresh, 0)
	if err != nil {
		t.Fatalf("Open after a crash before the first sync = %v", err)
	}
	l2.Close()

	// An empty log without a head is new: opened, given a head.
	empty := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := Open(empty, 0); err != nil {
		t.Errorf("Open(empty log, no head) = %v", err)
	} else {
		l.Close()
	}

	// A head with lines but no log: the log was removed.
	gone := writeLog(t, 2)
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	if l, err := Open(gone, 0); err == nil {
		l.Close()
		t.Error("Open started a new log over the head of a removed one")
	}
}

// TestHeadNotWrittenThroughSymlink: a link planted at the name the head
// used to be written under first is not followed.
func TestHeadNotWrittenThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(target, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, headOf(path)+".tmp"); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Operation: "Encrypt", Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(target); string(got) != "precious\n" {
		t.Errorf("the link's target now holds %q: the head was written through a planted link", got)
	}
	if _, err := VerifyFile(path); err != nil {
		t.Error(err)
	}
}
