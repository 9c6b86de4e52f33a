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
// # Reopening, and verification in the background
//
// Open on an existing file continues its chain in a time that does not
// grow with the log: it reads the log backwards from its end down to the
// line the head records (after a clean close, the last line; after a
// crash, the lines written since the last fsync too), checks that line's
// seq and hash against the head (and the head's MAC with a head key), the
// line before it links to it, and every line after it chains as Verify
// checks, and continues after the last. Anything wrong there refuses Open
// as a full verification did: a log cut short or cut mid-line, a head
// rewritten or ahead of the log, a line edited, repeated or inserted at the
// end. What Open reads is about 64 KiB whatever the log's size (verifying
// every line at start took 4.2 s of a central's 6.1 s restart at 100,000
// keys, and grows with the log).
//
// The rest of the chain is then verified in the background, in one
// sequential pass over the bytes the log held at Open through a 64 KiB
// buffer, on one goroutine, up to the line Open continued from: Log.Check
// reports it (Checking, then Verified, Broken at a line, or Failed to
// read), and Config.Checked hears its end. A broken chain found there does
// not stop the log: the lines before the break and the lines appended
// since stay as they are, the damage is reported (the node logs an error,
// sets keybroker_audit_chain_broken and writes a VerifyAuditChain line of
// its own) and `keybroker audit verify` names the line. The node does not
// make this pass a condition of readiness: what it finds is past damage
// to a record, which refusing to serve would not repair, and the node
// would otherwise wait for a pass that grows with the log again; the
// chain's end, the part an attacker changes to hide recent operations, is
// checked before anything is appended.
//
// A log is not split into segments: it grows by one line per operation
// (about 300 to 500 bytes; a central writes a CreateKey line per key
// made and a HoldMaterial line per key in every snapshot sealed to an
// edge, so about 480 MB per million keys sealed to an edge), and its
// verification is offline (`keybroker audit verify`) or in the background.
// docs/deploy.md ("The audit log") says how an operator rotates it.
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

	checkDone chan struct{} // closed when the background pass ends
	check     ChainCheck    // under mu
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
	// Checked, when set, is called once with the result of the background
	// verification of the chain (see Log.Check) when it ends, from its
	// goroutine; not when Close stops it first. It may Append.
	Checked func(ChainCheck)
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

// Open opens (creating if needed) the audit log at path, checking its end
// and continuing its chain. flush is the fsync interval (0 means
// DefaultFlushInterval). It is OpenConfig without a head key.
func Open(path string, flush time.Duration) (*Log, error) {
	return OpenConfig(Config{Path: path, FlushInterval: flush})
}

// OpenConfig opens (creating if needed) the audit log c.Path, checks its
// end against its head and continues its chain; the whole chain is then
// verified in the background (see Log.Check). A log with lines but no head
// file is refused, as is a head file with no log, a log whose end does not
// reach or does not match its head, and a head whose MAC does not check
// under c.HeadKey.
func OpenConfig(c Config) (*Log, error) {
	path, flush := c.Path, c.FlushInterval
	if flush <= 0 {
		flush = DefaultFlushInterval
	}
	if c.HeadKey != nil && len(c.HeadKey) < MinHeadKeyLen {
		return nil, fmt.Errorf("audit: head key is %d bytes, want at least %d", len(c.HeadKey), MinHeadKeyLen)
	}
	seq, prev := uint64(0), zeroHash
	var size int64
	head := headOf(path)
	_, headErr := os.Lstat(head)
	if headErr != nil && !errors.Is(headErr, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", headErr)
	}
	hasHead := headErr == nil
	// rf reads the log for the background pass: the file whose end was
	// checked here, whatever is renamed over its path later.
	rf, err := os.Open(path)
	if err == nil {
		st, serr := rf.Stat()
		if serr != nil {
			rf.Close()
			return nil, fmt.Errorf("audit: %w", serr)
		}
		size = st.Size()
		if size > 0 && !hasHead {
			rf.Close()
			return nil, fmt.Errorf("audit: %s has lines but no head file %s, so lines dropped from its end could not be detected; "+
				"refusing to continue it. Restore the head file if you have it; otherwise check the log with "+
				"`keybroker audit verify` against a copy kept elsewhere, move it (and nothing else) aside, and start a new log", path, head)
		}
		var terr error
		seq, prev, _, terr = openTail(rf, size, head, c.HeadKey)
		if terr != nil {
			rf.Close()
			return nil, fmt.Errorf("audit: %s does not verify, refusing to append: %w", path, terr)
		}
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
		if rf != nil {
			rf.Close()
		}
		return nil, fmt.Errorf("audit: %w", err)
	}
	if seq == 0 {
		// A new (or empty) log gets its head at once, so that a head file
		// missing later means it was removed, never that it was not yet
		// written.
		if err := writeHead(head, 0, zeroHash, c.HeadKey); err != nil {
			f.Close()
			if rf != nil {
				rf.Close()
			}
			return nil, fmt.Errorf("audit: head: %w", err)
		}
	}
	l := &Log{path: path, f: f, headKey: c.HeadKey, seq: seq, prev: prev, wseq: seq, whash: prev,
		stop: make(chan struct{}), done: make(chan struct{}), checkDone: make(chan struct{}),
		check: ChainCheck{State: Checking, Upto: seq}}
	l.written = sync.NewCond(&l.mu)
	go l.flusher(flush)
	go l.checkChain(rf, size, seq, prev, c.Checked)
	return l, nil
}

// openTail checks the end of a log against its head and returns the chain
// to continue: the last line's seq and hash. It reads the log backwards
// from its end (size bytes) down to the line the head records, checks that
// line's hash against the head and the line before it, then reads forwards
// from there checking every line after it as Verify does. After a clean
// close the head records the last line, so it reads one line and the one
// before; after a crash, the lines written since the last fsync too. A log
// whose head records line 0 is read from its start. Memory stays that of a
// few lines whatever it reads. It returns the bytes it read.
func openTail(r io.ReaderAt, size int64, headPath string, key []byte) (seq uint64, hash string, read int64, err error) {
	headSeq, headHash, _, err := readHead(headPath, key)
	if err != nil {
		return 0, "", 0, err
	}
	from := int64(0) // where the lines after the head's begin
	back := &backLines{r: r, pos: size}
	if headSeq == 0 {
		if headHash != "" && headHash != zeroHash {
			return 0, "", 0, fmt.Errorf("head file %s records line 0 with a hash that is not the empty chain's", headPath)
		}
		headHash = zeroHash // the head of a new log, or none (an empty log)
	} else if from, err = findHead(back, headSeq, headHash); err != nil {
		return 0, "", back.read, err
	}
	fwd := &countingReader{r: io.NewSectionReader(r, from, size-from)}
	seq, hash, err = verifyFrom(fwd, headSeq, headHash)
	return seq, hash, back.read + fwd.n, err
}

// findHead reads lines from back (the log's end) down to line headSeq,
// checks it against headHash and the line before it, and returns the
// offset just past it.
func findHead(back *backLines, headSeq uint64, headHash string) (int64, error) {
	var want uint64 // the seq the next line back must have, once one is read
	for last := true; ; last = false {
		line, off, err := back.prev()
		if err == io.EOF {
			// The lines run from the end down to the first without the
			// one the head records (or there are none).
			return 0, &VerifyError{want, fmt.Sprintf("the log has no line %d, which its head file records", headSeq)}
		}
		if err != nil {
			return 0, err
		}
		if last && !bytes.HasSuffix(line, []byte("\n")) {
			return 0, &VerifyError{0, "incomplete last line (no newline)"}
		}
		rec, err := decodeLine(line)
		if err != nil {
			return 0, &VerifyError{want, err.Error()}
		}
		switch {
		case last && rec.Seq < headSeq:
			return 0, &VerifyError{rec.Seq, fmt.Sprintf("log ends at line %d but its head file records line %d: lines were dropped from the end", rec.Seq, headSeq)}
		case !last && rec.Seq != want:
			return 0, &VerifyError{want, fmt.Sprintf("sequence %d, want %d (a line was dropped, inserted or moved)", rec.Seq, want)}
		}
		if rec.Seq == headSeq {
			h, err := checkLine(line, rec, rec.Seq, rec.Prev)
			if err != nil {
				return 0, err
			}
			if h != headHash {
				return 0, &VerifyError{rec.Seq, "hash differs from the one the head file recorded"}
			}
			// And the line before it links to it, so that Open refuses a
			// line repeated or inserted just before the end too.
			if err := checkBefore(back, rec); err != nil {
				return 0, err
			}
			return off + int64(len(line)), nil
		}
		want = rec.Seq - 1 // > 0: rec.Seq > headSeq > 0
	}
}

// verifyFrom checks the lines r holds as the lines after line seq, whose
// hash is hash, and returns the last line's seq and hash. A VerifyError
// names a line by its seq.
func verifyFrom(r io.Reader, seq uint64, hash string) (uint64, string, error) {
	br := bufio.NewReaderSize(r, 16<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) == 0 && err == io.EOF {
			return seq, hash, nil
		}
		if err == io.EOF {
			return 0, "", &VerifyError{0, "incomplete last line (no newline)"}
		}
		if err != nil {
			return 0, "", err
		}
		rec, err := decodeLine(line)
		if err != nil {
			return 0, "", &VerifyError{seq + 1, err.Error()}
		}
		if hash, err = checkLine(line, rec, seq+1, hash); err != nil {
			return 0, "", err
		}
		seq++
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// checkBefore checks, reading it from back, the line before rec: line 1
// has none; any other's must be rec.Seq-1 and hash to rec.Prev.
func checkBefore(back *backLines, rec Record) error {
	line, _, err := back.prev()
	if err == io.EOF {
		if rec.Seq == 1 {
			return nil
		}
		return &VerifyError{rec.Seq, fmt.Sprintf("sequence %d is the log's first line, want 1 (lines were dropped)", rec.Seq)}
	}
	if err != nil {
		return err
	}
	if rec.Seq == 1 {
		return &VerifyError{1, "a line before line 1 (a line was inserted)"}
	}
	before, err := decodeLine(line)
	if err != nil {
		return &VerifyError{rec.Seq - 1, err.Error()}
	}
	h, err := checkLine(line, before, rec.Seq-1, before.Prev)
	if err != nil {
		return err
	}
	if h != rec.Prev {
		return &VerifyError{rec.Seq, "prev does not match the previous line's hash (a line was dropped or moved)"}
	}
	return nil
}

// backLines reads a file's lines from its end.
type backLines struct {
	r    io.ReaderAt
	pos  int64  // file offset of buf[0]
	buf  []byte // bytes from pos not yet returned
	read int64  // bytes read so far
	next int    // size of the next read (doubles while a line is longer)
}

// prev returns the line before the ones already returned, its newline
// included (the last line of a file may lack one), and its offset in the
// file, or io.EOF at the start. A line returned stays valid: a buffer is
// never written once a line of it is returned.
func (b *backLines) prev() ([]byte, int64, error) {
	if b.next == 0 {
		b.next = 64 << 10
	}
	for {
		if len(b.buf) > 0 {
			if i := bytes.LastIndexByte(b.buf[:len(b.buf)-1], '\n'); i >= 0 {
				line := b.buf[i+1:]
				b.buf, b.next = b.buf[:i+1], 64<<10
				return line, b.pos + int64(i+1), nil
			}
			if b.pos == 0 {
				line := b.buf
				b.buf = nil
				return line, 0, nil
			}
		} else if b.pos == 0 {
			return nil, 0, io.EOF
		}
		n := min(int64(b.next), b.pos)
		buf := make([]byte, int(n)+len(b.buf))
		if _, err := b.r.ReadAt(buf[:n], b.pos-n); err != nil {
			return nil, 0, err
		}
		copy(buf[n:], b.buf)
		b.buf, b.pos, b.read = buf, b.pos-n, b.read+n
		b.next = min(2*b.next, 64<<20)
	}
}

// decodeLine decodes one line as a Record, refusing fields a Record does
// not have.
func decodeLine(line []byte) (Record, error) {
	var rec Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return rec, errors.New("not an audit record: " + err.Error())
	}
	return rec, nil
}

// checkLine checks a decoded line at seq, after a line whose hash is prev:
// its seq and prev, its hash, and that its bytes are exactly what the
// writer writes for it. It returns its hash.
func checkLine(line []byte, rec Record, seq uint64, prev string) (string, error) {
	if rec.Seq != seq {
		return "", &VerifyError{seq, fmt.Sprintf("sequence %d, want %d (a line was dropped, inserted or moved)", rec.Seq, seq)}
	}
	if rec.Prev != prev {
		return "", &VerifyError{seq, "prev does not match the previous line's hash (a line was dropped or moved)"}
	}
	want := rec.Hash
	check := rec
	canonical, err := seal(&check, rec.Seq, rec.Prev)
	if err != nil {
		return "", &VerifyError{seq, err.Error()}
	}
	if check.Hash != want {
		return "", &VerifyError{seq, "hash mismatch (the line was edited)"}
	}
	// The hash covers the record as decoded; the line must also be
	// exactly what the writer writes for it, or another reader could see
	// what was not verified (data after the record, a duplicate field the
	// decoder let the last copy win, a field name in another case).
	if !bytes.Equal(canonical, line) {
		return "", &VerifyError{seq, "the line is not as the writer writes its record (extra data, a repeated or renamed field)"}
	}
	return want, nil
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
	<-l.checkDone
	l.mu.Lock()
	for l.writing {
		l.written.Wait()
	}
	l.mu.Unlock()
	err := l.Sync()
	return errors.Join(err, l.f.Close())
}

// CheckState is where the background verification of a log's chain
// stands.
type CheckState int

// States of the background verification.
const (
	// Checking: the pass is running.
	Checking CheckState = iota
	// Verified: every line up to where Open continued the chain verified.
	Verified
	// Broken: the chain is broken; ChainCheck.Err says where and how.
	Broken
	// Failed: the log could not be read to the end (ChainCheck.Err).
	Failed
	// Stopped: Close stopped the pass before it ended.
	Stopped
)

func (s CheckState) String() string {
	switch s {
	case Checking:
		return "checking"
	case Verified:
		return "verified"
	case Broken:
		return "broken"
	case Failed:
		return "failed"
	case Stopped:
		return "stopped"
	}
	return "CheckState(" + strconv.Itoa(int(s)) + ")"
}

// ChainCheck is the background verification's state and, once it ends,
// its result.
type ChainCheck struct {
	State CheckState
	// Upto is the line Open continued the chain from: the pass verifies
	// lines 1 to Upto (those appended since were chained by this Log).
	Upto uint64
	// Lines is how many lines verified (Upto once Verified; the lines
	// before the break once Broken).
	Lines uint64
	// Took is how long the pass ran, once it ended.
	Took time.Duration
	// Err says why the state is Broken or Failed; a *VerifyError when the
	// chain is broken.
	Err error
}

// Check is where the background verification of the chain stands. Open
// checks only the log's end against its head, so that its time does not
// grow with the log; this pass then reads the whole log once, as Verify
// does, up to the line Open continued from.
func (l *Log) Check() ChainCheck {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.check
}

// CheckDone is closed when the background verification ends (or Close
// stops it), after Config.Checked has returned.
func (l *Log) CheckDone() <-chan struct{} { return l.checkDone }

// errStopped ends the background pass when the log is closed.
var errStopped = errors.New("audit: log closed during verification")

// stoppable reads r until stop is closed.
type stoppable struct {
	r    io.Reader
	stop <-chan struct{}
}

func (s stoppable) Read(p []byte) (int, error) {
	select {
	case <-s.stop:
		return 0, errStopped
	default:
	}
	return s.r.Read(p)
}

// checkChain is the background pass: it verifies rf's first size bytes
// (rf nil: a new log, nothing to verify) and that they end at line upto
// with hash last, the chain Open continued. It reads the file once,
// sequentially, through Verify's 64 KiB buffer.
func (l *Log) checkChain(rf *os.File, size int64, upto uint64, last string, checked func(ChainCheck)) {
	start := time.Now()
	res := ChainCheck{State: Verified, Upto: upto}
	if rf != nil {
		v, err := verify(stoppable{io.LimitReader(rf, size), l.stop}, "", nil)
		rf.Close()
		res.Lines = v.Lines
		switch {
		case errors.Is(err, errStopped):
			res.State = Stopped
		case errors.As(err, new(*VerifyError)):
			res.State, res.Err = Broken, err
		case err != nil:
			res.State, res.Err = Failed, err
		case v.Lines != upto || v.LastHash != last:
			// The file changed under its path between Open's check of
			// its end and this pass.
			res.State, res.Err = Broken, &VerifyError{v.Lines, fmt.Sprintf("the log verifies to line %d, not to line %d where Open continued it", v.Lines, upto)}
		}
	}
	res.Took = time.Since(start)
	l.mu.Lock()
	l.check = res
	l.mu.Unlock()
	defer close(l.checkDone)
	if res.State != Stopped && checked != nil {
		checked(res)
	}
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
	// Line is the 1-based line number in the file. Open, which reads only
	// the end of a log, gives the line's number by the chain's sequence
	// (its number in a log intact before it), or 0 for the last line when
	// even that is unknown.
	Line   uint64
	Reason string
}

func (e *VerifyError) Error() string {
	if e.Line == 0 {
		return "at the end of the log: " + e.Reason
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Reason)
}

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
		rec, err := decodeLine(line)
		if err != nil {
			return res, &VerifyError{lineNo, err.Error()}
		}
		want, err := checkLine(line, rec, res.Lines+1, res.LastHash)
		if err != nil {
			if ve, ok := err.(*VerifyError); ok {
				ve.Line = lineNo
			}
			return res, err
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
