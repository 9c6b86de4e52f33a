// Package h2serve serves HTTP/2 over TLS for the front-ends of their own
// listeners (the AWS KMS API, the XKS proxy), in place of net/http's
// HTTP/2 server, built on golang.org/x/net/http2's Framer and hpack.
//
// The front-ends' requests and answers are small and many, and net/http's
// server spends about half of a node's CPU on such a call around the
// handler: it writes every answer with a TLS record and a write(2) of its
// own, from a goroutine started for that write, and starts a goroutine per
// request whose stack grows through the handler. This server reads each
// request's body whole (bounded by MaxBodyBytes) before the handler runs,
// runs handlers on goroutines it keeps, buffers each answer, and writes the
// answers of a connection from one writer goroutine that flushes only
// when it has nothing more to write — so that under load many answers
// share a TLS record and a write, as gRPC's transport does.
//
// It speaks RFC 9113 as a server: flow control both ways, SETTINGS, PING,
// RST_STREAM, GOAWAY (graceful on Shutdown and on the peer's), CONTINUATION
// through the Framer (which bounds the header list and cuts off a
// CONTINUATION flood). A stream counts against MaxStreams until its handler
// has returned, even when the client resets it, so that resetting streams
// does not start more handlers than the limit (the rapid-reset attack).
// Not served: server push, CONNECT, h2c (cleartext), streaming bodies.
// Handlers see an *http.Request with Proto "HTTP/2.0", the whole body and
// its exact length, and the TLS state; they answer through an
// http.ResponseWriter whose output is sent when the handler returns.
package h2serve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// DefaultMaxStreams is the default of Server.MaxStreams.
	DefaultMaxStreams = 128
	// DefaultMaxBodyBytes is the default of Server.MaxBodyBytes.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxHeaderBytes is the default of Server.MaxHeaderBytes.
	DefaultMaxHeaderBytes = 64 << 10

	frameSize       = 16384    // the largest frame read; RFC 9113's initial SETTINGS_MAX_FRAME_SIZE, not changed
	writeBuffer     = 32 << 10 // a flush's buffer: two TLS records' worth of answers
	prefaceTimeout  = 10 * time.Second
	maxQueuedCtrl   = 10000 // control frames waiting to be written: a peer that floods PINGs or SETTINGS is cut off
	refundThreshold = 16 << 10
	initialBody     = 16 << 10 // a body's first buffer at most, whatever its content-length says
	workerIdle      = 10 * time.Second
	maxWindow       = 1<<31 - 1
)

// Server serves HTTP/2 connections handed to it by an http.Server
// (Configure) or directly (ServeConn). The zero value's limits are the
// defaults; Handler is required.
type Server struct {
	Handler http.Handler
	// MaxStreams bounds the streams a connection has open at once,
	// counting a stream until its handler returns (SETTINGS_MAX_CONCURRENT_STREAMS).
	MaxStreams uint32
	// MaxBodyBytes bounds what is read of a request's body: a body longer
	// than that reaches the handler cut at MaxBodyBytes+1 bytes, so that a
	// handler that bounds its bodies to MaxBodyBytes sees one too long.
	MaxBodyBytes int64
	// MaxHeaderBytes bounds a request's header list (SETTINGS_MAX_HEADER_LIST_SIZE).
	MaxHeaderBytes uint32
	// IdleTimeout closes a connection with no stream open for that long (default 2 minutes).
	IdleTimeout time.Duration
	// ReadTimeout resets a stream whose request has not arrived whole
	// that long after its headers (default 1 minute).
	ReadTimeout time.Duration
	// WriteTimeout closes a connection whose writes stall that long (default 1 minute).
	WriteTimeout time.Duration
	// Log receives connection errors at debug level; nil discards them.
	Log *slog.Logger

	once  sync.Once
	work  chan *stream // handlers for idle workers
	mu    sync.Mutex
	conns map[*conn]struct{}
	shut  bool
	date  atomic.Pointer[dateLine]
}

// Configure makes hs serve HTTP/2 through s: "h2" offered first in ALPN,
// its connections handed to ServeConn, and hs.Shutdown sending GOAWAY to
// them. Call it before hs.ServeTLS.
func (s *Server) Configure(hs *http.Server) {
	if hs.TLSConfig == nil {
		hs.TLSConfig = &tls.Config{}
	} else {
		hs.TLSConfig = hs.TLSConfig.Clone()
	}
	hs.TLSConfig.NextProtos = []string{"h2", "http/1.1"}
	if hs.TLSNextProto == nil {
		hs.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	hs.TLSNextProto["h2"] = func(_ *http.Server, c *tls.Conn, _ http.Handler) { s.ServeConn(c) }
	hs.RegisterOnShutdown(s.Shutdown)
}

func (s *Server) init() {
	s.once.Do(func() {
		s.work = make(chan *stream)
		s.conns = map[*conn]struct{}{}
	})
}

func (s *Server) maxStreams() uint32 {
	if s.MaxStreams == 0 {
		return DefaultMaxStreams
	}
	return s.MaxStreams
}

func (s *Server) maxBody() int64 {
	if s.MaxBodyBytes <= 0 {
		return DefaultMaxBodyBytes
	}
	return min(s.MaxBodyBytes, maxWindow-1)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Shutdown sends GOAWAY on every connection: each takes no new stream,
// answers those it has, and closes. ServeConn returns when its connection
// has closed and its handlers have returned.
func (s *Server) Shutdown() {
	s.init()
	s.mu.Lock()
	s.shut = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		c.goAway(http2.ErrCodeNo)
		c.mu.Unlock()
	}
}

// spawn runs st's handler on an idle worker, or on a new one.
func (s *Server) spawn(st *stream) {
	select {
	case s.work <- st:
	default:
		go s.worker(st)
	}
}

// worker runs handlers until it has been idle for workerIdle: a request
// runs on a goroutine whose stack has already grown.
func (s *Server) worker(st *stream) {
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		st.c.runHandler(st)
		t.Reset(workerIdle)
		select {
		case st = <-s.work:
		case <-t.C:
			return
		}
	}
}

type dateLine struct {
	sec  int64
	text string
}

// dateNow is the Date header, formatted once a second.
func (s *Server) dateNow() string {
	now := time.Now()
	if d := s.date.Load(); d != nil && d.sec == now.Unix() {
		return d.text
	}
	d := &dateLine{sec: now.Unix(), text: now.UTC().Format(http.TimeFormat)}
	s.date.Store(d)
	return d.text
}

// ServeConn serves HTTP/2 on c, whose client has sent or will send the
// connection preface, until the connection ends; it returns once the
// connection is closed and its handlers have returned.
func (s *Server) ServeConn(nc net.Conn) {
	s.init()
	c := newConn(s, nc)
	s.mu.Lock()
	shut := s.shut
	if !shut {
		s.conns[c] = struct{}{}
	}
	s.mu.Unlock()
	if shut {
		_ = nc.Close()
		return
	}
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	c.serve()
}

func (s *Server) logf(msg string, args ...any) {
	if s.Log != nil {
		s.Log.Debug(msg, args...)
	}
}

func (s *Server) connError(err error) string {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return "closed"
	}
	return err.Error()
}

// plainAnswer is the body and header of an answer the server makes itself.
func plainAnswer(code int) ([]byte, http.Header) {
	return []byte(strconv.Itoa(code) + " " + http.StatusText(code) + "\n"),
		http.Header{"Content-Type": {"text/plain; charset=utf-8"}}
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// newConn sets up a connection's state; serve runs it.
func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv: s, nc: nc, ctx: ctx, cancel: cancel,
		bw:           bufio.NewWriterSize(nc, writeBuffer),
		streams:      map[uint32]*stream{},
		sendWin:      65535,
		peerInitWin:  65535,
		peerMaxFrame: frameSize,
		writerDone:   make(chan struct{}),
		lastActive:   time.Now(),
		remote:       nc.RemoteAddr().String(),
	}
	c.cond.L = &c.mu
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, 16<<10))
	c.fr.SetMaxReadFrameSize(frameSize)
	c.fr.SetReuseFrames() // a DATA frame's bytes are copied out before the next read
	maxHeader := s.MaxHeaderBytes
	if maxHeader == 0 {
		maxHeader = DefaultMaxHeaderBytes
	}
	c.fr.MaxHeaderListSize = maxHeader
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	c.streamWin = min(s.maxBody()+1, maxWindow)
	c.recvWin = min(int64(s.maxStreams())*c.streamWin, maxWindow)
	if tc, ok := nc.(*tls.Conn); ok {
		st := tc.ConnectionState()
		c.tlsState = &st
	}
	return c
}
