package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitCheck waits for l's background verification to end.
func waitCheck(t *testing.T, l *Log) ChainCheck {
	t.Helper()
	select {
	case <-l.CheckDone():
	case <-time.After(time.Minute):
		t.Fatal("the background verification did not end within a minute")
	}
	return l.Check()
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r io.ReaderAt
	n atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// TestOpenReadsOnlyTheEnd: what Open reads of a log does not grow with
// the log. A log of 1,000 lines and one of 30,000 (11 MB) are checked
// with the same bytes read, one read of at most 64 KiB, and give the
// chain's end.
func TestOpenReadsOnlyTheEnd(t *testing.T) {
	var reads []int64
	for _, n := range []int{1_000, 30_000} {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		last := buildLog(t, path, n, nil)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		c := &countingReaderAt{r: f}
		seq, hash, read, err := openTail(c, st.Size(), headOf(path), nil)
		f.Close()
		if err != nil {
			t.Fatalf("openTail(%d lines) = %v", n, err)
		}
		if seq != uint64(n) || hash != last {
			t.Errorf("openTail(%d lines) continues from %d %s, want %d %s", n, seq, hash, n, last)
		}
		if read != c.n.Load() {
			t.Errorf("openTail(%d lines) says it read %d bytes; %d went through the reader", n, read, c.n.Load())
		}
		if read > 64<<10 || read >= st.Size() {
			t.Errorf("openTail(%d lines, %d bytes) read %d bytes, want at most 64 KiB", n, st.Size(), read)
		}
		reads = append(reads, read)
	}
	if reads[0] != reads[1] {
		t.Errorf("openTail read %d bytes of 1,000 lines and %d of 30,000, want the same", reads[0], reads[1])
	}
}

// TestOpenContinuesPastAHeadBehind: after a crash the log may hold lines
// the head does not cover yet (written, not yet fsynced and recorded).
// Open checks those lines forwards from the head's and continues after the
// last; with a head key too.
func TestOpenContinuesPastAHeadBehind(t *testing.T) {
	for _, key := range [][]byte{nil, bytes.Repeat([]byte("k"), 32)} {
		t.Run(fmt.Sprintf("key=%t", key != nil), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			buildLog(t, path, 10, key)
			ls := lines(t, path)
			r, err := decodeLine(ls[6])
			if err != nil {
				t.Fatal(err)
			}
			if err := writeHead(headOf(path), r.Seq, r.Hash, key); err != nil {
				t.Fatal(err)
			}
			l, err := OpenConfig(Config{Path: path, HeadKey: key})
			if err != nil {
				t.Fatalf("OpenConfig(head at 7 of 10) = %v", err)
			}
			if err := l.Append(Record{Operation: "Decrypt", Outcome: "ok"}); err != nil {
				t.Fatal(err)
			}
			if c := waitCheck(t, l); c.State != Verified || c.Upto != 10 || c.Lines != 10 {
				t.Errorf("Check = %+v, want 10 lines verified", c)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if res, err := VerifyFileWithKey(path, key); err != nil || res.Lines != 11 || !res.HeadSeen {
				t.Errorf("VerifyFile = %+v, %v; want 11 lines and the head seen", res, err)
			}
		})
	}
}

// TestOpenRefusesABadEnd: whatever is wrong at the end of a log, or
// between its end and its head, still refuses Open, as when Open
// verified the whole log.
func TestOpenRefusesABadEnd(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, path string, ls [][]byte) [][]byte
		want   string
	}{
		{"last line edited", func(_ *testing.T, _ string, ls [][]byte) [][]byte {
			ls[len(ls)-1] = bytes.Replace(ls[len(ls)-1], []byte(`"ok"`), []byte(`"no"`), 1)
			return ls
		}, "hash mismatch"},
		{"last line dropped", func(_ *testing.T, _ string, ls [][]byte) [][]byte { return ls[:len(ls)-1] }, "dropped from the end"},
		{"last line repeated", func(_ *testing.T, _ string, ls [][]byte) [][]byte { return append(ls, ls[len(ls)-1]) }, "sequence"},
		{"line before the last replaced by an earlier one", func(_ *testing.T, _ string, ls [][]byte) [][]byte {
			ls[len(ls)-2] = ls[len(ls)-3]
			return ls
		}, "sequence"},
		{"line before the last edited", func(_ *testing.T, _ string, ls [][]byte) [][]byte {
			ls[len(ls)-2] = bytes.Replace(ls[len(ls)-2], []byte(`"ok"`), []byte(`"no"`), 1)
			return ls
		}, "hash mismatch"},
		{"line before the last is garbage", func(_ *testing.T, _ string, ls [][]byte) [][]byte {
			ls[len(ls)-2] = []byte("garbage\n")
			return ls
		}, "not an audit record"},
		{"a line after the head's not chained", func(t *testing.T, path string, ls [][]byte) [][]byte {
			r, err := decodeLine(ls[len(ls)-3])
			if err != nil {
				t.Fatal(err)
			}
			if err := writeHead(headOf(path), r.Seq, r.Hash, nil); err != nil {
				t.Fatal(err)
			}
			ls[len(ls)-2] = bytes.Replace(ls[len(ls)-2], []byte(`"ok"`), []byte(`"no"`), 1)
			return ls
		}, "hash mismatch"},
		{"head rewritten", func(t *testing.T, path string, ls [][]byte) [][]byte {
			if err := writeHead(headOf(path), uint64(len(ls)), strings.Repeat("ab", 32), nil); err != nil {
				t.Fatal(err)
			}
			return ls
		}, "differs from the one the head file recorded"},
		{"head ahead of the log", func(t *testing.T, path string, ls [][]byte) [][]byte {
			if err := writeHead(headOf(path), uint64(len(ls))+5, strings.Repeat("ab", 32), nil); err != nil {
				t.Fatal(err)
			}
			return ls
		}, "dropped from the end"},
		{"head at a line the log lacks", func(t *testing.T, path string, ls [][]byte) [][]byte {
			if err := writeHead(headOf(path), 3, strings.Repeat("ab", 32), nil); err != nil {
				t.Fatal(err)
			}
			return ls[5:]
		}, "no line 3"},
		{"first lines dropped, head 0", func(t *testing.T, path string, ls [][]byte) [][]byte {
			if err := writeHead(headOf(path), 0, zeroHash, nil); err != nil {
				t.Fatal(err)
			}
			return ls[1:]
		}, "sequence"},
		{"line before line 1", func(_ *testing.T, _ string, ls [][]byte) [][]byte {
			return append([][]byte{ls[0]}, ls...)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			n := 50
			if strings.Contains(tc.name, "line 1") {
				n = 1
			}
			buildLog(t, path, n, nil)
			rewrite(t, path, tc.tamper(t, path, lines(t, path)))
			l, err := Open(path, 0)
			if err == nil {
				l.Close()
				t.Fatalf("Open after %s succeeded", tc.name)
			}
			if !strings.Contains(err.Error(), "refusing to append") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open after %s = %v, want a refusal mentioning %q", tc.name, err, tc.want)
			}
		})
	}
	t.Run("incomplete last line", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		buildLog(t, path, 50, nil)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data[:len(data)-10], 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := Open(path, 0); err == nil || !strings.Contains(err.Error(), "incomplete last line") {
			if err == nil {
				l.Close()
			}
			t.Errorf("Open(cut mid-line) = %v, want an incomplete last line", err)
		}
	})
}

// TestBackgroundCatchesTheMiddle: a line tampered with in the middle of a
// large log, which Open does not read, is found by the background pass
// (Check is Broken at that line, Config.Checked hears it) and by
// VerifyFile (`keybroker audit verify`); the log goes on being appended
// to. Open succeeds as well on a log whose whole middle is garbage.
func TestBackgroundCatchesTheMiddle(t *testing.T) {
	const n = 5_000
	for _, tc := range []struct {
		name   string
		tamper func(ls [][]byte) [][]byte
		line   uint64
		want   string
	}{
		{"edited", func(ls [][]byte) [][]byte {
			ls[n/2] = bytes.Replace(ls[n/2], []byte(`"allow"`), []byte(`"deny"`), 1)
			return ls
		}, n/2 + 1, "hash mismatch"},
		{"dropped", func(ls [][]byte) [][]byte { return append(ls[:n/3:n/3], ls[n/3+1:]...) }, n/3 + 1, "sequence"},
		{"middle is garbage", func(ls [][]byte) [][]byte {
			for i := 100; i < n-100; i++ {
				ls[i] = bytes.Repeat([]byte{'#'}, len(ls[i]))
			}
			return ls
		}, 101, "not an audit record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			buildLog(t, path, n, nil)
			rewrite(t, path, tc.tamper(lines(t, path)))
			heard := make(chan ChainCheck, 1)
			l, err := OpenConfig(Config{Path: path, Checked: func(c ChainCheck) { heard <- c }})
			if err != nil {
				t.Fatalf("OpenConfig(%s in the middle) = %v, want it to check only the end", tc.name, err)
			}
			c := waitCheck(t, l)
			var ve *VerifyError
			if c.State != Broken || !errors.As(c.Err, &ve) || ve.Line != tc.line || !strings.Contains(ve.Reason, tc.want) {
				t.Errorf("Check = %+v (%v), want Broken at line %d: %s", c, c.Err, tc.line, tc.want)
			}
			if c.Upto != n || c.Lines != tc.line-1 {
				t.Errorf("Check Upto %d Lines %d, want %d and %d", c.Upto, c.Lines, n, tc.line-1)
			}
			if got := <-heard; got.State != Broken {
				t.Errorf("Checked heard %v, want broken", got.State)
			}
			if err := l.Append(Record{Operation: "Encrypt", Outcome: "ok"}); err != nil {
				t.Errorf("Append after a broken check = %v, want the log appended to", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			res, err := VerifyFile(path)
			if !errors.As(err, &ve) || ve.Line != tc.line || !strings.Contains(ve.Reason, tc.want) || res.Lines != tc.line-1 {
				t.Errorf("VerifyFile = %+v, %v; want a break at line %d: %s", res, err, tc.line, tc.want)
			}
		})
	}
}

// TestCheckVerifiesAGoodLog: the background pass verifies an intact log
// and reports it to Checked; a new log is verified at once.
func TestCheckVerifiesAGoodLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	buildLog(t, path, 5_000, nil)
	var heard atomic.Pointer[ChainCheck]
	l, err := OpenConfig(Config{Path: path, Checked: func(c ChainCheck) { heard.Store(&c) }})
	if err != nil {
		t.Fatal(err)
	}
	if c := waitCheck(t, l); c.State != Verified || c.Lines != 5_000 || c.Upto != 5_000 || c.Err != nil {
		t.Errorf("Check = %+v, want 5,000 lines verified", c)
	}
	if h := heard.Load(); h == nil || h.State != Verified {
		t.Errorf("Checked heard %+v, want verified", h)
	}
	l.Close()
	fresh, err := Open(filepath.Join(t.TempDir(), "new.jsonl"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if c := waitCheck(t, fresh); c.State != Verified || c.Lines != 0 {
		t.Errorf("Check(new log) = %+v, want verified with 0 lines", c)
	}
}

// TestCheckRacesAppendsAndClose: appends, Check and Close while the
// background pass runs (go test -race); a Close before the pass ends
// stops it, and Checked is not called for a stopped pass.
func TestCheckRacesAppendsAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	buildLog(t, path, 10_000, nil)
	var calls atomic.Int32
	l, err := OpenConfig(Config{Path: path, Checked: func(c ChainCheck) {
		calls.Add(1)
		if c.State == Stopped {
			t.Errorf("Checked called for a stopped pass")
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				if err := l.Append(Record{Operation: "Encrypt", RequestID: fmt.Sprintf("%d-%d", w, i), Outcome: "ok"}); err != nil {
					t.Error(err)
				}
				_ = l.Check()
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.CheckDone():
	default:
		t.Fatal("Close returned before the background pass ended")
	}
	c := l.Check()
	switch c.State {
	case Verified:
		if calls.Load() != 1 {
			t.Errorf("Checked called %d times for a verified log, want once", calls.Load())
		}
	case Stopped:
		if calls.Load() != 0 {
			t.Errorf("Checked called %d times for a stopped pass, want never", calls.Load())
		}
	default:
		t.Errorf("Check after Close = %+v, want verified or stopped", c)
	}
	if res, err := VerifyFile(path); err != nil || res.Lines != 10_800 {
		t.Errorf("VerifyFile = %+v, %v; want 10,800 lines", res, err)
	}
}

// TestOpenLongLines: lines longer than Open's 64 KiB read at the end of a
// log are read whole.
func TestOpenLongLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	buildLog(t, path, 100, nil)
	for i := range 3 {
		l, err := Open(path, 0)
		if err != nil {
			t.Fatalf("Open after %d long lines = %v", i, err)
		}
		if err := l.Append(Record{Operation: "Encrypt", Outcome: "ok", Detail: strings.Repeat("d", 100<<10*(i+1))}); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	l, err := Open(path, 0)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	if c := waitCheck(t, l); c.State != Verified || c.Upto != 103 {
		t.Errorf("Check = %+v, want 103 lines verified", c)
	}
	l.Close()
}
