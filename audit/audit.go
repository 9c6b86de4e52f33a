// Package audit writes keybroker's audit log: append-only JSON lines, one
// per operation, hash-chained so that any edited, dropped, inserted or
// reordered line is detected by Verify.
//
// # Chain
//
// Each line carries seq (1, 2, 3, ...), prev (the previous line's hash; 64
// zeros for the first) and hash = hex(SHA-256(prev ‖ "\n" ‖ body)), where
// body is the line's JSON encoding with the hash field empty. Changing any
// field changes the hash; removing or moving a line breaks seq and prev.
//
// Dropping lines from the end of the file leaves a valid shorter chain. To
// catch that, the writer keeps FILE.head — the last seq and hash, replaced
// atomically after each flush — and Verify compares the file with it when
// it is present. An attacker able to rewrite both files undetected needs the
// head kept elsewhere too; ship the head (or the log) off the machine for
// that.
//
// # Durability
//
// Append writes each line with one write(2) before returning, so a crash
// of the process loses nothing already appended. The file is fsynced by a
// background flusher every FlushInterval and on Close; a machine crash can
// lose at most that interval. Append is safe for concurrent use.
//
// # Reopening
//
// Open on an existing file verifies it and continues its chain, so a
// restarted node appends to the same log.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Record is one audited operation. The writer fills Seq, Prev and Hash.
type Record struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id,omitempty"`
	Principal string    `json:"principal,omitempty"`
	Node      string    `json:"node,omitempty"`
	Operation string    `json:"operation"`
	Key       string    `json:"key,omitempty"`
	Version   uint32    `json:"version,omitempty"`
	Decision  string    `json:"decision,omitempty"` // allow, deny
	PolicyID  string    `json:"policy_id,omitempty"`
	Backend   string    `json:"backend,omitempty"`
	// Via is the edge that forwarded the call on the principal's behalf.
	Via string `json:"via,omitempty"`
	// BackendCalls are the calls this request made to roots of trust
	// ("backend:op", at most 16; BackendCallsDropped counts the rest).
	BackendCalls        []string `json:"backend_calls,omitempty"`
	BackendCallsDropped int      `json:"backend_calls_dropped,omitempty"`
	Outcome             string   `json:"outcome"` // ok or an error code
	Detail              string   `json:"detail,omitempty"`

	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

var zeroHash = strings.Repeat("0", 64)

func chainHash(prev string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(prev))
	h.Write([]byte{'\n'})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// seal fills r's chain fields and returns its line (with newline).
func seal(r *Record, seq uint64, prev string) ([]byte, error) {
	r.Seq, r.Prev, r.Hash = seq, prev, ""
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	r.Hash = chainHash(prev, body)
	line, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return append(line, '\n'), nil
}

// DefaultFlushInterval is how often the writer fsyncs.
const DefaultFlushInterval = 100 * time.Millisecond

// Log is an open audit log.
type Log struct {
	path string
	f    *os.File

	mu     sync.Mutex
	seq    uint64
	prev   string
	dirty  bool
	err    error // sticky write error
	closed bool

	stop chan struct{}
	done chan struct{}
}

// Open opens (creating if needed) the audit log at path, verifying what it
// holds and continuing its chain. flush is the fsync interval (0 means
// DefaultFlushInterval).
func Open(path string, flush time.Duration) (*Log, error) {
	if flush <= 0 {
		flush = DefaultFlushInterval
	}
	seq, prev := uint64(0), zeroHash
	if f, err := os.Open(path); err == nil {
		res, verr := Verify(f, headOf(path))
		f.Close()
		if verr != nil {
			return nil, fmt.Errorf("audit: %s does not verify, refusing to append: %w", path, verr)
		}
		seq, prev = res.Lines, res.LastHash
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l := &Log{path: path, f: f, seq: seq, prev: prev, stop: make(chan struct{}), done: make(chan struct{})}
	go l.flusher(flush)
	return l, nil
}

// Append writes one record. It fails only when the log cannot be written;
// callers must then refuse the operation (no unaudited operations).
func (l *Log) Append(r Record) error {
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("audit: log is closed")
	}
	if l.err != nil {
		return l.err
	}
	line, err := seal(&r, l.seq+1, l.prev)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if _, err := l.f.Write(line); err != nil {
		l.err = fmt.Errorf("audit: write %s: %w", l.path, err)
		return l.err
	}
	l.seq, l.prev, l.dirty = r.Seq, r.Hash, true
	return nil
}

func (l *Log) flusher(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			_ = l.Sync()
		}
	}
}

// Sync fsyncs the log and updates its head file.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncLocked()
}

func (l *Log) syncLocked() error {
	if !l.dirty || l.err != nil {
		return l.err
	}
	if err := l.f.Sync(); err != nil {
		l.err = fmt.Errorf("audit: fsync %s: %w", l.path, err)
		return l.err
	}
	if err := writeHead(headOf(l.path), l.seq, l.prev); err != nil {
		l.err = fmt.Errorf("audit: head: %w", err)
		return l.err
	}
	l.dirty = false
	return nil
}

// Close flushes and closes the log.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.syncLocked()
	return errors.Join(err, l.f.Close())
}

func headOf(path string) string { return path + ".head" }

func writeHead(path string, seq uint64, hash string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %s\n", seq, hash), 0o600); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = errors.Join(f.Sync(), f.Close())
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Result summarises a verified log.
type Result struct {
	Lines    uint64
	LastHash string
	HeadSeen bool // a head file was found and matched
}

// VerifyError says where the chain broke.
type VerifyError struct {
	Line   uint64 // 1-based line number in the file
	Reason string
}

func (e *VerifyError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Reason) }

// Verify reads a log and checks every line's hash, sequence and link. When
// headPath names an existing head file, the log must end exactly at it
// (lines dropped from the end are detected). headPath "" skips that check.
func Verify(r io.Reader, headPath string) (Result, error) {
	res := Result{LastHash: zeroHash}
	headSeq, headHash, err := readHead(headPath)
	if err != nil {
		return res, err
	}
	br := bufio.NewReaderSize(r, 64<<10)
	var lineNo uint64
	for {
		line, err := br.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			break
		}
		lineNo++
		if err == io.EOF {
			return res, &VerifyError{lineNo, "incomplete last line (no newline)"}
		}
		if err != nil {
			return res, err
		}
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			return res, &VerifyError{lineNo, "not an audit record: " + err.Error()}
		}
		if rec.Seq != res.Lines+1 {
			return res, &VerifyError{lineNo, fmt.Sprintf("sequence %d, want %d (a line was dropped, inserted or moved)", rec.Seq, res.Lines+1)}
		}
		if rec.Prev != res.LastHash {
			return res, &VerifyError{lineNo, "prev does not match the previous line's hash (a line was dropped or moved)"}
		}
		want := rec.Hash
		check := rec
		if _, err := seal(&check, rec.Seq, rec.Prev); err != nil {
			return res, &VerifyError{lineNo, err.Error()}
		}
		if check.Hash != want {
			return res, &VerifyError{lineNo, "hash mismatch (the line was edited)"}
		}
		if rec.Seq == headSeq {
			if want != headHash {
				return res, &VerifyError{lineNo, "hash differs from the one the head file recorded"}
			}
			res.HeadSeen = true
		}
		res.Lines, res.LastHash = rec.Seq, want
	}
	if headSeq > res.Lines {
		return res, &VerifyError{res.Lines, fmt.Sprintf("log ends at line %d but its head file records line %d: lines were dropped from the end", res.Lines, headSeq)}
	}
	return res, nil
}

// readHead reads a head file; a missing file (or "" path) gives seq 0.
func readHead(path string) (uint64, string, error) {
	if path == "" {
		return 0, "", nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, "", fmt.Errorf("head file %s is malformed", path)
	}
	seq, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || len(f[1]) != 64 {
		return 0, "", fmt.Errorf("head file %s is malformed", path)
	}
	return seq, f[1], nil
}

// VerifyFile verifies the log at path against its head file.
func VerifyFile(path string) (Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	return Verify(f, headOf(path))
}
