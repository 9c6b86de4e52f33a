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
// atomically after each fsync — and Verify compares the file with it.
//
// # What the head proves, and its limits
//
// Without a head key (Config.HeadKey), the head is a plain "seq hash" line:
// it catches a log cut short by accident or by someone who did not rewrite
// the head too, but whoever can write the directory can drop the last lines
// and write a head that matches what is left.
//
// With a head key, the head also carries HMAC-SHA256(key, seq and hash),
// and a head whose MAC does not check is refused: dropping lines and
// rewriting the head needs the key. The key must therefore be readable by
// the node but not by whoever you fear may edit the log (a separate file,
// another owner's secret store); an attacker with the node's own
// privileges reads it and can forge heads, so against that attacker only a
// copy of the log or its heads shipped off the machine helps. Two more
// limits hold with a key too: the lines written since the last fsync (at
// most Config.FlushInterval of them) are not covered by any head yet, and
// an attacker who kept an earlier genuine head can truncate the log back to
// exactly that point — a head is not a monotonic counter.
//
// Open refuses a log that has lines but no head file (or, with a head key,
// a head without a valid MAC), saying how to recover: a head is written as
// soon as a log is created, so its absence means it was removed. Verify
// reports such a log verified but without its head (HeadSeen false).
//
// # Durability
//
// Append returns once its line is written with write(2), so a crash of
// the process loses nothing already appended; concurrent appends share one
// write(2). The file is fsynced by a
// background flusher every FlushInterval and on Close; a machine crash can
// lose at most that interval. Append is safe for concurrent use.
//
// # Reopening
//
// Open on an existing file verifies it (against its head) and continues
// its chain, so a restarted node appends to the same log.
package audit

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/atomicfile"
)

// Operation is what a record is about: a policy action ("Encrypt",
// "CreateKey"), or a call of a node's own services ("Watch",
// "RegisterEdge", "Forward", "BatchEncrypt"). A string in the log.
type Operation string

// Decision is the policy's decision on a call; the zero Decision (left
// out of the line) is a call refused or failed before any decision.
type Decision string

// Decisions. They are the strings the log has always held, so old logs
// verify and read alike.
const (
	Allow Decision = "allow"
	Deny  Decision = "deny"
)

// Record is one audited operation. The writer fills Seq, Prev and Hash.
type Record struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id,omitempty"`
	// ClientRequestID is the x-request-id a caller the node does not trust
	// to name requests sent: kept for the caller's own correlation, never
	// the request id.
	ClientRequestID string    `json:"client_request_id,omitempty"`
	Principal       string    `json:"principal,omitempty"`
	Node            string    `json:"node,omitempty"`
	Operation       Operation `json:"operation"`
	Key             string    `json:"key,omitempty"`
	Version         uint32    `json:"version,omitempty"`
	Decision        Decision  `json:"decision,omitempty"`
	PolicyID        string    `json:"policy_id,omitempty"`
	Backend         string    `json:"backend,omitempty"`
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

// seal fills r's chain fields and returns its line (with newline).
func seal(r *Record, seq uint64, prev string) ([]byte, error) {
	r.Seq, r.Prev, r.Hash = 0, "", ""
	prefix, err := encodePrefix(r)
	if err != nil {
		return nil, err
	}
	line, hash := chain(prefix, seq, prev)
	r.Seq, r.Prev, r.Hash = seq, prev, hash
	return line, nil
}

// chainTail is how the JSON encoding of a Record with zero chain fields
// ends: seq, prev and hash are its last fields and never left out.
const chainTail = `"seq":0,"prev":"","hash":""}`

// encodePrefix is r's JSON encoding up to its chain fields: everything
// that does not depend on the record's place in the log, so it is done
// before taking the log's lock. r's chain fields must be zero.
func encodePrefix(r *Record) ([]byte, error) {
	if b, ok := appendPrefix(make([]byte, 0, 384), r); ok {
		return b, nil
	}
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if !bytes.HasSuffix(body, []byte(chainTail)) {
		return nil, fmt.Errorf("audit: record encoding ends %q, not with its chain fields", body[max(0, len(body)-len(chainTail)):])
	}
	return body[:len(body)-len(chainTail)], nil
}

// appendPrefix appends what encodePrefix returns, written directly rather
// than through reflection: the same bytes json.Marshal writes, field by
// field in the struct's order with its omitempty rules. It declines (false)
// a record it cannot write exactly that way — a string json.Marshal would
// escape, a time json.Marshal would refuse — and the caller falls back to
// json.Marshal.
func appendPrefix(b []byte, r *Record) ([]byte, bool) {
	if y := r.Time.Year(); y < 0 || y > 9999 {
		return nil, false
	}
	if _, offset := r.Time.Zone(); offset%60 != 0 {
		return nil, false
	}
	ok := true
	quoted := func(v string) {
		if !plainJSON(v) {
			ok = false
			return
		}
		b = append(b, '"')
		b = append(b, v...)
		b = append(b, '"')
	}
	field := func(name, v string, omitEmpty bool) {
		if v == "" && omitEmpty {
			return
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
		quoted(v)
		b = append(b, ',')
	}
	b = append(b, `{"time":"`...)
	b = r.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `",`...)
	field("request_id", r.RequestID, true)
	field("client_request_id", r.ClientRequestID, true)
	field("principal", r.Principal, true)
	field("node", r.Node, true)
	field("operation", string(r.Operation), false)
	field("key", r.Key, true)
	if r.Version != 0 {
		b = append(b, `"version":`...)
		b = strconv.AppendUint(b, uint64(r.Version), 10)
		b = append(b, ',')
	}
	field("decision", string(r.Decision), true)
	field("policy_id", r.PolicyID, true)
	field("backend", r.Backend, true)
	field("via", r.Via, true)
	if len(r.BackendCalls) > 0 {
		b = append(b, `"backend_calls":[`...)
		for i, c := range r.BackendCalls {
			if i > 0 {
				b = append(b, ',')
			}
			quoted(c)
		}
		b = append(b, `],`...)
	}
	if r.BackendCallsDropped != 0 {
		b = append(b, `"backend_calls_dropped":`...)
		b = strconv.AppendInt(b, int64(r.BackendCallsDropped), 10)
		b = append(b, ',')
	}
	field("outcome", r.Outcome, false)
	field("detail", r.Detail, true)
	return b, ok
}

// plainJSON says whether json.Marshal writes v as it is between quotes:
// printable ASCII with nothing it escapes.
func plainJSON(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// chain completes a record's line from its prefix: the body is the
// record's JSON with seq and prev set and hash empty, exactly as
// json.Marshal writes it; the line is the body with the hash filled in.
// One buffer holds prev, "\n" and the body for hashing, then the line.
func chain(prefix []byte, seq uint64, prev string) (line []byte, hash string) {
	buf := make([]byte, 0, len(prev)+1+len(prefix)+len(prev)+2*sha256.Size+48)
	buf = append(buf, prev...)
	buf = append(buf, '\n')
	start := len(buf)
	buf = append(buf, prefix...)
	buf = append(buf, `"seq":`...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, `,"prev":"`...)
	buf = append(buf, prev...)
	buf = append(buf, `","hash":"`...)
	n := len(buf)
	buf = append(buf, `"}`...)
	sum := sha256.Sum256(buf)
	line = hex.AppendEncode(buf[:n], sum[:])
	line = append(line, '"', '}', '\n')
	return line[start:], string(line[n : n+2*sha256.Size])
}

// DefaultFlushInterval is how often the writer fsyncs.
const DefaultFlushInterval = 100 * time.Millisecond

// Log is an open audit log.
//
// Appends are group-committed: each Append chains its line under the lock
// and queues it; one appender at a time writes everything queued with one
// write(2) and wakes the others, so concurrent appends share system calls
// and each still returns only once its own line is written.
type Log struct {
	path    string
	f       *os.File
	headKey []byte

	syncMu  sync.Mutex // serialises Syncs
	mu      sync.Mutex
	written *sync.Cond // signalled after each write
	seq     uint64     // last line chained
	prev    string     // its hash
	queue   []byte     // lines chained, not yet written
	writing bool       // an appender is writing (outside mu)
	// wseq and whash are the last line written.
	wseq   uint64
	whash  string
	dirty  bool
	err    error  // sticky write error
	failed uint64 // lines from this seq on were not written
	closed bool

	stop chan struct{}
	done chan struct{}
}

// Config configures a Log.
type Config struct {
	// Path is the log file; its head is Path + ".head".
	Path string
	// FlushInterval is the fsync interval (0: DefaultFlushInterval).
	FlushInterval time.Duration
	// HeadKey, when set (at least MinHeadKeyLen bytes), authenticates the
	// head file with HMAC-SHA256, so that lines dropped from the end
	// cannot be hidden by rewriting the head without it. A log opened
	// with a key refuses a head without a valid MAC.
	HeadKey []byte
}

// MinHeadKeyLen is the shortest head key accepted.
const MinHeadKeyLen = 32

// ReadHeadKey reads a head key file: its bytes as they are, at least
// MinHeadKeyLen of them (head -c 32 /dev/urandom makes one).
func ReadHeadKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit: head key: %w", err)
	}
	if len(key) < MinHeadKeyLen {
		return nil, fmt.Errorf("audit: head key %s is %d bytes, want at least %d", path, len(key), MinHeadKeyLen)
	}
	return key, nil
}

// Open opens (creating if needed) the audit log at path, verifying what it
// holds and continuing its chain. flush is the fsync interval (0 means
// DefaultFlushInterval). It is OpenConfig without a head key.
func Open(path string, flush time.Duration) (*Log, error) {
	return OpenConfig(Config{Path: path, FlushInterval: flush})
}

// OpenConfig opens (creating if needed) the audit log c.Path, verifying
// what it holds against its head and continuing its chain. A log with
// lines but no head file is refused, as is a head file with no log.
func OpenConfig(c Config) (*Log, error) {
	path, flush := c.Path, c.FlushInterval
	if flush <= 0 {
		flush = DefaultFlushInterval
	}
	if c.HeadKey != nil && len(c.HeadKey) < MinHeadKeyLen {
		return nil, fmt.Errorf("audit: head key is %d bytes, want at least %d", len(c.HeadKey), MinHeadKeyLen)
	}
	seq, prev := uint64(0), zeroHash
	head := headOf(path)
	_, headErr := os.Lstat(head)
	if headErr != nil && !errors.Is(headErr, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", headErr)
	}
	hasHead := headErr == nil
	if f, err := os.Open(path); err == nil {
		st, serr := f.Stat()
		if serr != nil {
			f.Close()
			return nil, fmt.Errorf("audit: %w", serr)
		}
		if st.Size() > 0 && !hasHead {
			f.Close()
			return nil, fmt.Errorf("audit: %s has lines but no head file %s, so lines dropped from its end could not be detected; "+
				"refusing to continue it. Restore the head file if you have it; otherwise check the log with "+
				"`keybroker audit verify` against a copy kept elsewhere, move it (and nothing else) aside, and start a new log", path, head)
		}
		res, verr := verify(f, head, c.HeadKey)
		f.Close()
		if verr != nil {
			return nil, fmt.Errorf("audit: %s does not verify, refusing to append: %w", path, verr)
		}
		seq, prev = res.Lines, res.LastHash
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", err)
	} else if hasHead {
		hs, _, _, herr := readHead(head, c.HeadKey)
		if herr != nil {
			return nil, fmt.Errorf("audit: %w", herr)
		}
		if hs > 0 {
			return nil, fmt.Errorf("audit: %s is missing but its head file %s records %d lines: the log was removed; "+
				"restore it, or move the head file aside to start a new log", path, head, hs)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if seq == 0 {
		// A new (or empty) log gets its head at once, so that a head file
		// missing later means it was removed, never that it was not yet
		// written.
		if err := writeHead(head, 0, zeroHash, c.HeadKey); err != nil {
			f.Close()
			return nil, fmt.Errorf("audit: head: %w", err)
		}
	}
	l := &Log{path: path, f: f, headKey: c.HeadKey, seq: seq, prev: prev, wseq: seq, whash: prev, stop: make(chan struct{}), done: make(chan struct{})}
	l.written = sync.NewCond(&l.mu)
	go l.flusher(flush)
	return l, nil
}

// Append writes one record. It fails only when the log cannot be written;
// callers must then refuse the operation (no unaudited operations).
func (l *Log) Append(r Record) error {
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	r.Seq, r.Prev, r.Hash = 0, "", ""
	prefix, err := encodePrefix(&r)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("audit: log is closed")
	}
	if l.err != nil {
		return l.err
	}
	line, hash := chain(prefix, l.seq+1, l.prev)
	l.seq, l.prev = l.seq+1, hash
	l.queue = append(l.queue, line...)
	mine := l.seq
	for l.writing && l.wseq < mine && l.err == nil {
		l.written.Wait()
	}
	if l.wseq >= mine {
		return nil // another appender wrote it
	}
	if l.err != nil {
		return l.err
	}
	// Write what is queued, this line included, and whatever queues up
	// meanwhile, until nothing is left.
	l.writing = true
	defer func() { l.writing = false; l.written.Broadcast() }()
	for len(l.queue) > 0 && l.err == nil {
		batch, upto, hash := l.queue, l.seq, l.prev
		l.queue = nil
		l.mu.Unlock()
		_, werr := l.f.Write(batch)
		l.mu.Lock()
		if werr != nil {
			l.err = fmt.Errorf("audit: write %s: %w", l.path, werr)
			l.failed = l.wseq + 1
			break
		}
		l.wseq, l.whash, l.dirty = upto, hash, true
		l.written.Broadcast()
		if cap(batch) <= 64<<10 && l.queue == nil {
			l.queue = batch[:0]
		}
	}
	if l.err != nil && mine >= l.failed {
		return l.err
	}
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

// Sync fsyncs the log and updates its head file. Appends go on while it
// runs: the log's lock is held only to read what has been written so far
// and to record a failure, never across the fsync or the head's rename.
func (l *Log) Sync() error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	if !l.dirty || l.err != nil {
		err := l.err
		l.mu.Unlock()
		return err
	}
	// Lines written from here on mark the log dirty again for the next
	// Sync; the head records only what this fsync covers.
	seq, hash := l.wseq, l.whash
	l.dirty = false
	l.mu.Unlock()
	err := l.f.Sync()
	if err != nil {
		err = fmt.Errorf("audit: fsync %s: %w", l.path, err)
	} else if herr := writeHead(headOf(l.path), seq, hash, l.headKey); herr != nil {
		err = fmt.Errorf("audit: head: %w", herr)
	}
	if err != nil {
		l.mu.Lock()
		if l.err == nil {
			l.err = err
			l.failed = l.wseq + 1
		}
		l.written.Broadcast()
		l.mu.Unlock()
	}
	return err
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
	for l.writing {
		l.written.Wait()
	}
	l.mu.Unlock()
	err := l.Sync()
	return errors.Join(err, l.f.Close())
}

func headOf(path string) string { return path + ".head" }

// headMAC authenticates a head's seq and hash under key.
func headMAC(key []byte, seq uint64, hash string) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "keybroker audit head v1\n%d %s", seq, hash)
	return hex.EncodeToString(m.Sum(nil))
}

// writeHead replaces the head file atomically: a fresh temporary file in
// its directory (never a name an attacker could plant a link at), synced,
// renamed over it, the directory synced.
func writeHead(path string, seq uint64, hash string, key []byte) error {
	line := fmt.Appendf(nil, "%d %s\n", seq, hash)
	if key != nil {
		line = fmt.Appendf(nil, "%d %s %s\n", seq, hash, headMAC(key, seq, hash))
	}
	return atomicfile.Write(path, line, 0o600)
}

// Result summarises a verified log.
type Result struct {
	Lines    uint64
	LastHash string
	HeadSeen bool // a head file was found and matched
	// HeadAuthenticated says the head's MAC was checked with the key.
	HeadAuthenticated bool
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
// A head's MAC, if it has one, is not checked: see VerifyWithKey.
func Verify(r io.Reader, headPath string) (Result, error) {
	return verify(r, headPath, nil)
}

// VerifyWithKey is Verify with the head key: the head file must exist and
// carry a valid MAC under key.
func VerifyWithKey(r io.Reader, headPath string, key []byte) (Result, error) {
	if len(key) < MinHeadKeyLen {
		return Result{LastHash: zeroHash}, fmt.Errorf("head key is %d bytes, want at least %d", len(key), MinHeadKeyLen)
	}
	return verify(r, headPath, key)
}

func verify(r io.Reader, headPath string, key []byte) (Result, error) {
	res := Result{LastHash: zeroHash}
	if key != nil && headPath != "" {
		if _, err := os.Lstat(headPath); errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("head file %s is missing: with a head key it is required", headPath)
		}
	}
	headSeq, headHash, authed, err := readHead(headPath, key)
	if err != nil {
		return res, err
	}
	res.HeadAuthenticated = authed
	if headSeq == 0 && headHash != "" {
		// The head of a new log: nothing to match, but it was there.
		if headHash != zeroHash {
			return res, fmt.Errorf("head file %s records line 0 with a hash that is not the empty chain's", headPath)
		}
		res.HeadSeen = true
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
		canonical, err := seal(&check, rec.Seq, rec.Prev)
		if err != nil {
			return res, &VerifyError{lineNo, err.Error()}
		}
		if check.Hash != want {
			return res, &VerifyError{lineNo, "hash mismatch (the line was edited)"}
		}
		// The hash covers the record as decoded; the line must also be
		// exactly what the writer writes for it, or another reader could
		// see what was not verified (data after the record, a duplicate
		// field the decoder let the last copy win, a field name in another
		// case).
		if !bytes.Equal(canonical, line) {
			return res, &VerifyError{lineNo, "the line is not as the writer writes its record (extra data, a repeated or renamed field)"}
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

// readHead reads a head file; a missing file (or "" path) gives seq 0 and
// no hash. With key, the head must carry a MAC that checks (authed).
func readHead(path string, key []byte) (seq uint64, hash string, authed bool, err error) {
	if path == "" {
		return 0, "", false, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, err
	}
	f := strings.Fields(string(data))
	if len(f) != 2 && len(f) != 3 {
		return 0, "", false, fmt.Errorf("head file %s is malformed", path)
	}
	seq, err = strconv.ParseUint(f[0], 10, 64)
	if err != nil || len(f[1]) != 64 {
		return 0, "", false, fmt.Errorf("head file %s is malformed", path)
	}
	if key == nil {
		return seq, f[1], false, nil
	}
	if len(f) != 3 {
		return 0, "", false, fmt.Errorf("head file %s has no MAC, but a head key is configured: it was written without the key, or rewritten by someone who lacks it", path)
	}
	if !hmac.Equal([]byte(f[2]), []byte(headMAC(key, seq, f[1]))) {
		return 0, "", false, fmt.Errorf("head file %s: MAC does not match under the head key: the head was forged or the key is wrong", path)
	}
	return seq, f[1], true, nil
}

// VerifyFile verifies the log at path against its head file.
func VerifyFile(path string) (Result, error) {
	return VerifyFileWithKey(path, nil)
}

// VerifyFileWithKey verifies the log at path against its head file, whose
// MAC must check under key (nil: VerifyFile).
func VerifyFileWithKey(path string, key []byte) (Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return Result{}, err
	}
	defer f.Close()
	if key == nil {
		return Verify(f, headOf(path))
	}
	return VerifyWithKey(f, headOf(path), key)
}
