package h2serve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// conn is one HTTP/2 connection. Its reader (serve) owns the Framer's
// reading side and the receiving flow control; its writer (writeLoop)
// owns the Framer's writing side and the hpack encoder; what both touch —
// the streams, the queues, the sending windows — is under mu.
type conn struct {
	srv      *Server
	nc       net.Conn
	fr       *http2.Framer
	bw       *bufio.Writer
	ctx      context.Context
	cancel   context.CancelFunc
	tlsState *tls.ConnectionState
	remote   string

	// the reader's alone
	maxClientStream uint32
	recvWin         int64 // what the client may still send on the connection
	streamWin       int64 // each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE)
	handlers        sync.WaitGroup

	// the writer's alone
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu            sync.Mutex
	cond          sync.Cond // the writer waits on it
	streams       map[uint32]*stream
	ctrl          []ctrlFrame // control frames to write, in order
	ready         []*stream   // answers not yet written whole, in order
	sendWin       int64       // what the server may still send on the connection
	peerInitWin   int64
	peerMaxFrame  uint32
	peerTableSize uint32 // a table size the peer set, for the writer to apply
	tableChanged  bool
	refund        int64 // connection window to give back
	goingAway     bool  // GOAWAY queued: no new stream; close once the streams are answered
	goAwayID      uint32
	closing       bool // write what is queued, then close
	closed        bool
	lastActive    time.Time
	timer         *time.Timer
	writerDone    chan struct{}
}

type ctrlKind uint8

const (
	ctrlSettingsAck ctrlKind = iota
	ctrlPingAck
	ctrlWindowUpdate
	ctrlReset
	ctrlGoAway
)

type ctrlFrame struct {
	kind   ctrlKind
	stream uint32
	n      uint32 // a window increment, an error code
	ping   [8]byte
}

// stream is one request and its answer.
type stream struct {
	c          *conn
	id         uint32
	req        *http.Request
	cancel     context.CancelFunc
	started    time.Time
	declared   int64 // content-length, or -1
	body       []byte
	window     int64 // what the client may still send on the stream
	recvDone   bool  // the request arrived whole (END_STREAM) or was cut at the limit
	running    bool  // its handler was started
	answered   bool  // its handler returned
	answeredAt time.Time
	ended      bool // the client half-closed (END_STREAM seen)
	reset      bool // reset by the client or the server: its answer is not sent
	gone       bool // removed from the connection

	// the answer, fixed when the handler returns
	status      int
	header      http.Header
	out         *bytes.Buffer
	sent        int
	headersSent bool
	sendWin     int64 // under c.mu
}

// serve runs the connection: the preface, the settings, then frames until
// the connection ends.
func (c *conn) serve() {
	s := c.srv
	defer c.cancel()
	if err := c.handshake(); err != nil {
		s.logf("h2: handshake failed", "remote", c.remote, "err", s.connError(err))
		_ = c.nc.Close()
		return
	}
	c.mu.Lock()
	c.timer = time.AfterFunc(c.tick(), c.check)
	c.mu.Unlock()
	go c.writeLoop()
	err := c.readLoop()
	c.mu.Lock()
	switch ce := (http2.ConnectionError(0)); {
	case errors.As(err, &ce):
		c.ctrl = append(c.ctrl, ctrlFrame{kind: ctrlGoAway, stream: c.maxClientStream, n: uint32(ce)})
		c.closing = true
		s.logf("h2: connection error", "remote", c.remote, "code", http2.ErrCode(ce), "detail", c.fr.ErrorDetail())
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.ctrl = append(c.ctrl, ctrlFrame{kind: ctrlGoAway, stream: c.maxClientStream, n: uint32(http2.ErrCodeFrameSize)})
		c.closing = true
	default:
		c.closed = true // the client is gone or the writer closed the connection
		if !c.goingAway {
			s.logf("h2: connection ended", "remote", c.remote, "err", s.connError(err))
		}
	}
	c.timer.Stop()
	c.cond.Broadcast()
	c.mu.Unlock()
	select {
	case <-c.writerDone:
	case <-time.After(orDefault(s.WriteTimeout, time.Minute)):
	}
	_ = c.nc.Close()
	c.cancel() // every stream's context
	c.mu.Lock()
	c.closed = true
	for _, st := range c.streams {
		if !st.running {
			c.drop(st)
		}
	}
	c.mu.Unlock()
	c.handlers.Wait()
}

// handshake reads the client's preface and sends the server's SETTINGS.
func (c *conn) handshake() error {
	if err := c.nc.SetDeadline(time.Now().Add(prefaceTimeout)); err != nil {
		return err
	}
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(c.nc, preface[:]); err != nil {
		return err
	}
	if string(preface[:]) != http2.ClientPreface {
		return errors.New("not an HTTP/2 client preface")
	}
	maxHeader := c.fr.MaxHeaderListSize
	err := c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.maxStreams()},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.streamWin)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeader},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
	)
	if err == nil && c.recvWin > 65535 {
		err = c.fr.WriteWindowUpdate(0, uint32(c.recvWin-65535))
	}
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		return err
	}
	// The first frame must be the client's SETTINGS.
	f, err := c.fr.ReadFrame()
	if err != nil {
		return err
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		_ = c.fr.WriteGoAway(0, http2.ErrCodeProtocol, nil)
		_ = c.bw.Flush()
		return errors.New("the client's first frame is not SETTINGS")
	}
	c.mu.Lock()
	err = c.applySettings(sf)
	c.ctrl = append(c.ctrl, ctrlFrame{kind: ctrlSettingsAck})
	c.mu.Unlock()
	if err == nil {
		err = c.nc.SetDeadline(time.Time{})
	}
	return err
}

func (c *conn) tick() time.Duration {
	s := c.srv
	return max(min(orDefault(s.IdleTimeout, 2*time.Minute), orDefault(s.ReadTimeout, time.Minute), orDefault(s.WriteTimeout, time.Minute))/8, 10*time.Millisecond)
}

// check closes an idle connection, resets streams whose request has not
// arrived within ReadTimeout, and those whose answer the client's flow
// control has held back for WriteTimeout.
func (c *conn) check() {
	s := c.srv
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.closing {
		return
	}
	if len(c.streams) == 0 && now.Sub(c.lastActive) >= orDefault(s.IdleTimeout, 2*time.Minute) {
		c.goAway(http2.ErrCodeNo)
		return
	}
	for _, st := range c.streams {
		switch {
		case !st.recvDone && now.Sub(st.started) >= orDefault(s.ReadTimeout, time.Minute):
			c.resetStream(st, http2.ErrCodeCancel) // its request is late
		case st.answered && now.Sub(st.answeredAt) >= orDefault(s.WriteTimeout, time.Minute):
			c.resetStream(st, http2.ErrCodeCancel) // the client's window kept its answer back
		}
	}
	c.timer.Reset(c.tick())
}

// goAway queues GOAWAY: streams after the last one seen are not served,
// and the connection closes once those it has are answered. Under mu.
func (c *conn) goAway(code http2.ErrCode) {
	if c.goingAway || c.closed {
		return
	}
	c.goingAway = true
	c.goAwayID = c.maxClientStream
	c.ctrl = append(c.ctrl, ctrlFrame{kind: ctrlGoAway, stream: c.goAwayID, n: uint32(code)})
	c.cond.Signal()
}

// readLoop reads and handles frames until an error: a stream's error
// resets that stream and reading goes on; any other ends the connection.
func (c *conn) readLoop() error {
	for {
		f, err := c.fr.ReadFrame()
		if err == nil {
			err = c.handle(f)
		}
		c.mu.Lock()
		if err == nil && len(c.ctrl) >= maxQueuedCtrl {
			// The peer makes the connection owe it frames (PING and
			// SETTINGS acks, resets of streams it misuses) faster than it
			// reads them.
			err = http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
		var se http2.StreamError
		if errors.As(err, &se) {
			c.streamError(se.StreamID, se.Code)
			err = nil
		}
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// streamError resets a stream the client got wrong. Under mu.
func (c *conn) streamError(id uint32, code http2.ErrCode) {
	if st := c.streams[id]; st != nil {
		c.resetStream(st, code)
		return
	}
	c.queueCtrl(ctrlFrame{kind: ctrlReset, stream: id, n: uint32(code)})
}

func (c *conn) queueCtrl(f ctrlFrame) {
	c.ctrl = append(c.ctrl, f)
	c.cond.Signal()
}

func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if err := c.applySettings(f); err != nil {
			return err
		}
		c.queueCtrl(ctrlFrame{kind: ctrlSettingsAck})
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.queueCtrl(ctrlFrame{kind: ctrlPingAck, ping: f.Data})
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		if f.StreamID > c.maxClientStream {
			return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		}
		c.mu.Lock()
		if st := c.streams[f.StreamID]; st != nil {
			c.resetStream(st, 0) // the client's own reset: none sent back
		}
		c.mu.Unlock()
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goAway(http2.ErrCodeNo)
		c.mu.Unlock()
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeProtocol}
		}
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // clients do not push
	}
	return nil // unknown frames are ignored (RFC 9113 §5.5)
}

// applySettings takes the client's SETTINGS. Under mu.
func (c *conn) applySettings(f *http2.SettingsFrame) error {
	return f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWin
			c.peerInitWin = int64(s.Val)
			for _, st := range c.streams {
				st.sendWin += delta
				if st.sendWin > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			c.cond.Signal()
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingHeaderTableSize:
			c.peerTableSize = s.Val
			c.tableChanged = true
		}
		return nil
	})
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := int64(f.Increment)
	if f.StreamID == 0 {
		if c.sendWin+n > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.sendWin += n
		c.cond.Signal()
		return nil
	}
	if f.StreamID > c.maxClientStream {
		return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
	}
	st := c.streams[f.StreamID]
	if st == nil {
		return nil // closed
	}
	if st.sendWin+n > maxWindow {
		return http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl}
	}
	st.sendWin += n
	c.cond.Signal()
	return nil
}

// connection-specific fields a request must not carry (RFC 9113 §8.2.2).
var connHeaders = map[string]bool{"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "upgrade": true}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if id <= c.maxClientStream {
		// Trailers end an open request's body; anything else on a stream
		// already seen is the client's mistake.
		c.mu.Lock()
		defer c.mu.Unlock()
		st := c.streams[id]
		if st == nil || st.ended {
			return http2.ConnectionError(http2.ErrCodeStreamClosed)
		}
		if !f.StreamEnded() {
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
		}
		st.ended = true
		if !st.recvDone && !st.reset {
			c.endBody(st) // not when cut at the limit or answered already: its handler runs once
		}
		return nil
	}
	c.maxClientStream = id
	if f.HasPriority() && f.Priority.StreamDep == id {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.goingAway || c.closing || c.closed {
		return nil // after GOAWAY: not served, and the client knows it from the last stream id
	}
	if uint32(len(c.streams)) >= c.srv.maxStreams() {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeRefusedStream}
	}
	st := &stream{c: c, id: id, started: time.Now(), declared: -1, window: c.streamWin, sendWin: c.peerInitWin, ended: f.StreamEnded()}
	if f.Truncated {
		// The header list is longer than MaxHeaderBytes: answered here.
		c.addStream(st)
		st.recvDone = true
		body, h := plainAnswer(http.StatusRequestHeaderFieldsTooLarge)
		c.answer(st, http.StatusRequestHeaderFieldsTooLarge, h, body)
		return nil
	}
	req, declared, err := c.newRequest(f)
	if err != nil {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol}
	}
	st.declared = declared
	if declared > 0 && declared <= c.srv.maxBody() {
		// Sized for the common body, not for any declared one: what a
		// stream holds grows only with what the client sends.
		st.body = make([]byte, 0, min(declared, initialBody))
	}
	ctx, cancel := context.WithCancel(c.ctx)
	st.req, st.cancel = req.WithContext(ctx), cancel
	c.addStream(st)
	if st.ended {
		c.endBody(st)
	}
	return nil
}

func (c *conn) addStream(st *stream) { c.streams[st.id] = st }

// newRequest builds a stream's request from its header list.
func (c *conn) newRequest(f *http2.MetaHeadersFrame) (*http.Request, int64, error) {
	method, path := f.PseudoValue("method"), f.PseudoValue("path")
	scheme, authority := f.PseudoValue("scheme"), f.PseudoValue("authority")
	if method == "" || path == "" || scheme == "" || method == http.MethodConnect {
		return nil, 0, errors.New("malformed request pseudo-headers")
	}
	fields := f.RegularFields()
	header := make(http.Header, len(fields))
	for _, hf := range fields {
		if connHeaders[hf.Name] || (hf.Name == "te" && hf.Value != "trailers") {
			return nil, 0, errors.New("connection-specific header field")
		}
		key := canonicalKey(hf.Name)
		header[key] = append(header[key], hf.Value)
	}
	if authority == "" {
		authority = header.Get("Host")
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, 0, err
	}
	declared := int64(-1)
	if cl := header["Content-Length"]; len(cl) > 0 {
		if len(cl) > 1 {
			return nil, 0, errors.New("more than one content-length")
		}
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil {
			return nil, 0, err
		}
		declared = int64(n)
	}
	r := http.Request{
		Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: header,
		Host: authority, RemoteAddr: c.remote, RequestURI: path, TLS: c.tlsState,
		ContentLength: declared, Body: http.NoBody,
	}
	return &r, declared, nil
}

// common request header names, canonical, without an allocation each.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"accept", "accept-encoding", "amz-sdk-invocation-id", "amz-sdk-request",
		"authorization", "content-length", "content-type", "host", "user-agent", "x-amz-content-sha256",
		"x-amz-date", "x-amz-security-token", "x-amz-target", "x-amz-user-agent", "x-amzn-trace-id"} {
		m[k] = http.CanonicalHeaderKey(k)
	}
	return m
}()

func canonicalKey(name string) string {
	if k, ok := commonKeys[name]; ok {
		return k
	}
	return http.CanonicalHeaderKey(name)
}

func (c *conn) onData(f *http2.DataFrame) error {
	id, n := f.StreamID, int64(f.Length)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recvWin < n {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWin -= n
	st := c.streams[id]
	if st == nil || st.ended || st.reset {
		c.giveBack(n)
		switch {
		case id > c.maxClientStream:
			return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		case st != nil && st.reset:
			return nil // in flight when the stream was reset
		}
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed}
	}
	if st.window < n {
		c.giveBack(n)
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeFlowControl}
	}
	st.window -= n
	if st.recvDone {
		c.giveBack(n) // cut at the limit: the rest is not kept
	} else {
		data := f.Data()
		if st.declared >= 0 && int64(len(st.body)+len(data)) > st.declared {
			c.giveBack(n)
			return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol} // more than its content-length
		}
		// What is kept holds its connection window until the body reaches
		// the handler or is dropped; padding comes back at once.
		keep := min(int64(len(data)), c.srv.maxBody()+1-int64(len(st.body)))
		st.body = append(st.body, data[:keep]...)
		c.giveBack(n - keep)
		if int64(len(st.body)) > c.srv.maxBody() {
			c.endBody(st) // too long: the handler sees it so
		}
	}
	if f.StreamEnded() {
		st.ended = true
		if !st.recvDone {
			c.endBody(st)
		}
	}
	return nil
}

// giveBack returns connection window to the client, in batches. Under mu.
func (c *conn) giveBack(n int64) {
	c.refund += n
	if c.refund >= refundThreshold {
		c.recvWin += c.refund
		c.queueCtrl(ctrlFrame{kind: ctrlWindowUpdate, n: uint32(c.refund)})
		c.refund = 0
	}
}

// endBody starts a stream's handler once its request is whole (or cut at
// the limit). Under mu.
func (c *conn) endBody(st *stream) {
	st.recvDone = true
	if st.declared >= 0 && st.ended && int64(len(st.body)) != st.declared && int64(len(st.body)) <= c.srv.maxBody() {
		c.resetStream(st, http2.ErrCodeProtocol) // shorter than its content-length
		return
	}
	c.giveBack(int64(len(st.body)))
	if len(st.body) > 0 {
		st.req.Body = &body{r: bytes.NewReader(st.body)}
	}
	if st.declared < 0 {
		st.req.ContentLength = int64(len(st.body))
	}
	st.running = true
	c.handlers.Add(1)
	c.srv.spawn(st)
}

// body is a request's body, read whole before the handler runs.
type body struct{ r *bytes.Reader }

func (b *body) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *body) Close() error               { return nil }

// resetStream sends RST_STREAM (code non-zero) and forgets the stream
// once its handler, if any, has returned. Under mu.
func (c *conn) resetStream(st *stream, code http2.ErrCode) {
	if code != 0 && !st.reset {
		c.queueCtrl(ctrlFrame{kind: ctrlReset, stream: st.id, n: uint32(code)})
	}
	st.reset = true
	if st.cancel != nil {
		st.cancel()
	}
	if !st.running || st.answered {
		c.drop(st)
	}
}

// drop forgets a stream: its connection window comes back, its slot frees. Under mu.
func (c *conn) drop(st *stream) {
	if st.gone {
		return
	}
	st.gone = true
	delete(c.streams, st.id)
	if !st.running {
		c.giveBack(int64(len(st.body)))
	}
	for i, r := range c.ready {
		if r == st {
			c.ready = append(c.ready[:i], c.ready[i+1:]...)
			break
		}
	}
	st.body = nil // the answer's buffer is the writer's to recycle
	if st.cancel != nil {
		st.cancel()
	}
	if len(c.streams) == 0 {
		c.lastActive = time.Now()
		c.cond.Signal() // a connection going away closes now
	}
}

// runHandler runs a stream's handler and queues its answer.
func (c *conn) runHandler(st *stream) {
	defer c.handlers.Done()
	w := &responseWriter{st: st, out: bufPool.Get().(*bytes.Buffer)}
	if !c.serveHTTP(w, st) {
		c.mu.Lock()
		w.out.Reset()
		bufPool.Put(w.out)
		c.resetStream(st, http2.ErrCodeInternal)
		c.drop(st)
		c.mu.Unlock()
		return
	}
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	if st.req.Method == http.MethodHead {
		w.out.Reset() // an answer to HEAD has no content (RFC 9110 §9.3.2)
	}
	c.mu.Lock()
	c.answerBuf(st, status, w.header, w.out)
	c.mu.Unlock()
}

// serveHTTP calls the handler, reporting false if it panicked.
func (c *conn) serveHTTP(w *responseWriter, st *stream) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				c.srv.logf("h2: handler panicked", "remote", c.remote, "path", st.req.URL.Path, "panic", p)
			}
			ok = false
		}
	}()
	c.srv.Handler.ServeHTTP(w, st.req)
	return true
}

// answer queues an answer the server makes itself. Under mu.
func (c *conn) answer(st *stream, status int, h http.Header, b []byte) {
	out := bufPool.Get().(*bytes.Buffer)
	out.Write(b)
	c.answerBuf(st, status, h, out)
}

// answerBuf queues a stream's answer for the writer. Under mu.
func (c *conn) answerBuf(st *stream, status int, h http.Header, out *bytes.Buffer) {
	st.status, st.header, st.out, st.answered, st.answeredAt = status, h, out, true, time.Now()
	if st.reset || st.gone || c.closed {
		c.drop(st)
		return
	}
	c.ready = append(c.ready, st)
	c.cond.Signal()
}

// responseWriter buffers a handler's answer.
type responseWriter struct {
	st     *stream
	header http.Header
	status int
	out    *bytes.Buffer
}

func (w *responseWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header, 4)
	}
	return w.header
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.out.Write(b)
}
