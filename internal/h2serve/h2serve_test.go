package h2serve

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// start serves h through s behind an http.Server over TLS, as the node's
// front-ends are served, and returns it with an HTTP/2 client.
func start(t *testing.T, s *Server) (*httptest.Server, *http.Client) {
	t.Helper()
	ts := httptest.NewUnstartedServer(s.Handler)
	ts.EnableHTTP2 = true
	s.Configure(ts.Config)
	ts.TLS = ts.Config.TLSConfig
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // the client's surplus dials, closed in their handshake
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts, ts.Client()
}

// echo answers with what it was asked, and what the request looked like.
func echo(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Proto", r.Proto)
	w.Header().Set("X-Length", strconv.FormatInt(r.ContentLength, 10))
	w.Header().Set("X-Tls", strconv.FormatBool(r.TLS != nil))
	w.Header().Set("X-Path", r.URL.Path+"?"+r.URL.RawQuery)
	w.Header().Set("X-Host", r.Host)
	w.Header().Set("X-Target", r.Header.Get("X-Amz-Target"))
	_, _ = w.Write(b)
}

func TestRoundTrips(t *testing.T) {
	ts, client := start(t, &Server{Handler: http.HandlerFunc(echo), MaxBodyBytes: 64 << 10})
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			size := []int{0, 1, 1024, 20000, 64 << 10}[i%5]
			body := bytes.Repeat([]byte{byte(i)}, size)
			req, _ := http.NewRequest(http.MethodPost, ts.URL+"/a/b?x=1", bytes.NewReader(body))
			req.Header.Set("X-Amz-Target", "TrentService.Encrypt")
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			switch {
			case resp.ProtoMajor != 2 || resp.Header.Get("X-Proto") != "HTTP/2.0":
				errs <- fmt.Errorf("proto %s, handler saw %s", resp.Proto, resp.Header.Get("X-Proto"))
			case !bytes.Equal(got, body):
				errs <- fmt.Errorf("size %d: answer of %d bytes differs", size, len(got))
			case resp.Header.Get("X-Length") != strconv.Itoa(size) || resp.ContentLength != int64(size):
				errs <- fmt.Errorf("size %d: handler saw length %s, client %d", size, resp.Header.Get("X-Length"), resp.ContentLength)
			case resp.Header.Get("X-Tls") != "true" || resp.Header.Get("X-Path") != "/a/b?x=1" ||
				resp.Header.Get("X-Target") != "TrentService.Encrypt" || resp.Header.Get("X-Host") != strings.TrimPrefix(ts.URL, "https://"):
				errs <- fmt.Errorf("request seen as %v", resp.Header)
			case resp.Header.Get("Date") == "":
				errs <- errors.New("no Date")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A body longer than MaxBodyBytes reaches the handler cut one byte past
// the limit, so that the handler's own bound refuses it; the client gets
// the answer.
func TestBodyPastTheLimit(t *testing.T) {
	ts, client := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1000))
		if err != nil {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		_, _ = fmt.Fprint(w, len(b))
	}), MaxBodyBytes: 1000})
	for _, size := range []int{1000, 1001, 5000, 300 << 10} {
		resp, err := client.Post(ts.URL, "application/octet-stream", bytes.NewReader(make([]byte, size)))
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := http.StatusOK
		if size > 1000 {
			want = http.StatusRequestEntityTooLarge
		}
		if resp.StatusCode != want {
			t.Errorf("%d bytes: %d %q, want %d", size, resp.StatusCode, got, want)
		}
	}
	// The connection still serves.
	resp, err := client.Post(ts.URL, "text/plain", strings.NewReader("abc"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != "3" {
		t.Errorf("after: %q", got)
	}
}

// raw is an HTTP/2 client that speaks frames, for what a well-behaved
// client does not do.
type raw struct {
	t    *testing.T
	conn *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

func dialRaw(t *testing.T, ts *httptest.Server, settings ...http2.Setting) *raw {
	t.Helper()
	conn, err := tls.Dial("tcp", ts.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN chose %q", p)
	}
	c := &raw{t: t, conn: conn, fr: http2.NewFramer(conn, conn)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *raw) headers(id uint32, end bool, fields ...string) {
	c.t.Helper()
	c.hbuf.Reset()
	for i := 0; i < len(fields); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
}

func (c *raw) post(id uint32, end bool) {
	c.headers(id, end, ":method", "POST", ":scheme", "https", ":path", "/", ":authority", "test")
}

// next reads frames until one that is not SETTINGS, WINDOW_UPDATE or a PING ack.
func (c *raw) next() http2.Frame {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("reading: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = c.fr.WriteSettingsAck()
			}
			continue
		case *http2.WindowUpdateFrame:
			continue
		}
		return f
	}
}

func (c *raw) wantReset(id uint32, code http2.ErrCode) {
	c.t.Helper()
	f := c.next()
	if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.StreamID != id || rst.ErrCode != code {
		c.t.Fatalf("got %v, want RST_STREAM %d %v", f, id, code)
	}
}

func (c *raw) wantGoAway(code http2.ErrCode) {
	c.t.Helper()
	f := c.next()
	if g, ok := f.(*http2.GoAwayFrame); !ok || g.ErrCode != code {
		c.t.Fatalf("got %v, want GOAWAY %v", f, code)
	}
}

// status reads an answer's headers.
func (c *raw) status(id uint32) string {
	c.t.Helper()
	f := c.next()
	h, ok := f.(*http2.MetaHeadersFrame)
	if !ok || h.StreamID != id {
		c.t.Fatalf("got %v, want HEADERS on %d", f, id)
	}
	return h.PseudoValue("status")
}

// The answer is sent as the client's windows allow: a client with a
// 10-byte stream window gets 10 bytes, then more as it opens the window.
func TestFlowControlOfAnswers(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte("x"), 100))
	})})
	c := dialRaw(t, ts, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	c.post(1, true)
	if s := c.status(1); s != "200" {
		t.Fatalf("status %s", s)
	}
	got := 0
	want := func(n int, end bool) {
		t.Helper()
		f := c.next()
		d, ok := f.(*http2.DataFrame)
		if !ok || len(d.Data()) != n || d.StreamEnded() != end {
			t.Fatalf("got %v, want %d bytes (end %v)", f, n, end)
		}
		got += n
	}
	want(10, false)
	_ = c.fr.WriteWindowUpdate(1, 50)
	want(50, false)
	_ = c.fr.WriteWindowUpdate(1, 1000)
	want(40, true)
	if got != 100 {
		t.Errorf("got %d bytes", got)
	}
}

// Resetting streams does not start more handlers than MaxStreams: a
// stream counts until its handler returns (the rapid-reset attack).
func TestRapidResetIsBounded(t *testing.T) {
	release := make(chan struct{})
	var running, most atomic.Int32
	ts, _ := start(t, &Server{MaxStreams: 4, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := running.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		running.Add(-1)
	})})
	c := dialRaw(t, ts)
	for i := range 4 {
		id := uint32(1 + 2*i)
		c.post(id, true)
		_ = c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}
	// Four handlers hold their streams: the next are refused, however often they are reset.
	for i := 4; i < 40; i++ {
		id := uint32(1 + 2*i)
		c.post(id, true)
		c.wantReset(id, http2.ErrCodeRefusedStream)
	}
	if n := most.Load(); n > 4 {
		t.Fatalf("%d handlers ran at once, limit 4", n)
	}
	close(release)
	// Once they return, the connection serves again.
	deadline := time.Now().Add(10 * time.Second)
	for id := uint32(81); ; id += 2 {
		c.post(id, true)
		f := c.next()
		if h, ok := f.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused: %v", f)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// What a client gets wrong is answered with the error RFC 9113 names.
func TestProtocolErrors(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(echo), MaxHeaderBytes: 1000})
	t.Run("missing pseudo-header", func(t *testing.T) {
		c := dialRaw(t, ts)
		c.headers(1, true, ":method", "POST", ":scheme", "https")
		c.wantReset(1, http2.ErrCodeProtocol)
		c.post(3, true) // the connection goes on
		if s := c.status(3); s != "200" {
			t.Fatalf("status %s", s)
		}
	})
	t.Run("connection-specific header", func(t *testing.T) {
		c := dialRaw(t, ts)
		c.headers(1, true, ":method", "POST", ":scheme", "https", ":path", "/", "connection", "keep-alive")
		c.wantReset(1, http2.ErrCodeProtocol)
	})
	t.Run("content-length not met", func(t *testing.T) {
		c := dialRaw(t, ts)
		c.headers(1, false, ":method", "POST", ":scheme", "https", ":path", "/", "content-length", "10")
		_ = c.fr.WriteData(1, true, []byte("short"))
		c.wantReset(1, http2.ErrCodeProtocol)
		c.headers(3, false, ":method", "POST", ":scheme", "https", ":path", "/", "content-length", "2")
		_ = c.fr.WriteData(3, true, []byte("long"))
		c.wantReset(3, http2.ErrCodeProtocol)
	})
	t.Run("header list too long", func(t *testing.T) {
		c := dialRaw(t, ts)
		c.headers(1, true, ":method", "POST", ":scheme", "https", ":path", "/", "x-big", strings.Repeat("a", 900))
		if s := c.status(1); s != "431" {
			t.Fatalf("status %s", s)
		}
		// Far too long (twice the limit): the Framer does not decode it, and the connection ends.
		c.headers(3, true, ":method", "POST", ":scheme", "https", ":path", "/", "x-big", strings.Repeat("a", 3000))
		for {
			if _, ok := c.next().(*http2.GoAwayFrame); ok {
				break
			}
		}
	})
	t.Run("even stream id", func(t *testing.T) {
		c := dialRaw(t, ts)
		c.post(2, true)
		c.wantGoAway(http2.ErrCodeProtocol)
	})
	t.Run("data on an idle stream", func(t *testing.T) {
		c := dialRaw(t, ts)
		_ = c.fr.WriteData(5, true, []byte("x"))
		c.wantGoAway(http2.ErrCodeProtocol)
	})
	t.Run("data past the window", func(t *testing.T) {
		c := dialRaw(t, ts)
		c.post(1, false)
		chunk := make([]byte, 16384)
		for range 70 { // 1,146,880 bytes, past the stream's window of MaxBodyBytes+1
			if err := c.fr.WriteData(1, false, chunk); err != nil {
				break
			}
		}
		for {
			f := c.next()
			if rst, ok := f.(*http2.RSTStreamFrame); ok {
				if rst.ErrCode != http2.ErrCodeFlowControl && rst.ErrCode != http2.ErrCodeNo {
					t.Fatalf("got %v", rst)
				}
				return
			}
		}
	})
	t.Run("not HTTP/2", func(t *testing.T) {
		conn, err := tls.Dial("tcp", ts.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadAll(conn); err != nil && !errors.Is(err, io.EOF) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the connection stayed open")
			}
		}
	})
}

// A handler that panics costs its stream, not the connection.
func TestHandlerPanic(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("boom")
		}
		_, _ = io.WriteString(w, "ok")
	})})
	c := dialRaw(t, ts)
	c.headers(1, true, ":method", "GET", ":scheme", "https", ":path", "/panic")
	c.wantReset(1, http2.ErrCodeInternal)
	c.headers(3, true, ":method", "GET", ":scheme", "https", ":path", "/")
	if s := c.status(3); s != "200" {
		t.Fatalf("status %s", s)
	}
}

// An answer to HEAD carries no content, whatever the handler wrote.
func TestHead(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "only POST", http.StatusMethodNotAllowed)
	})})
	c := dialRaw(t, ts)
	c.headers(1, true, ":method", "HEAD", ":scheme", "https", ":path", "/")
	f := c.next()
	h, ok := f.(*http2.MetaHeadersFrame)
	if !ok || h.PseudoValue("status") != "405" || !h.StreamEnded() {
		t.Fatalf("got %v, want HEADERS 405 ending the stream", f)
	}
}

// Shutdown sends GOAWAY, answers the request in flight and closes.
func TestShutdown(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "done")
	})}
	ts, _ := start(t, s)
	c := dialRaw(t, ts)
	c.post(1, true)
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- ts.Config.Shutdown(context.Background()) }()
	c.wantGoAway(http2.ErrCodeNo)
	close(release)
	if st := c.status(1); st != "200" {
		t.Fatalf("status %s", st)
	}
	if d, ok := c.next().(*http2.DataFrame); !ok || string(d.Data()) != "done" {
		t.Fatalf("got %v", d)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}

// An idle connection is closed after IdleTimeout with GOAWAY.
func TestIdleTimeout(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(echo), IdleTimeout: 50 * time.Millisecond})
	c := dialRaw(t, ts)
	c.post(1, true)
	c.status(1)
	for {
		if g, ok := c.next().(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 {
				t.Fatalf("got %v", g)
			}
			return
		}
	}
}

// A request whose body does not arrive within ReadTimeout is reset.
func TestReadTimeout(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(echo), ReadTimeout: 50 * time.Millisecond})
	c := dialRaw(t, ts)
	c.post(1, false)
	c.wantReset(1, http2.ErrCodeCancel)
}

// TestH2spec runs h2spec (github.com/summerwind/h2spec) against the
// server when KEYBROKER_H2SPEC names its binary: `make h2spec`.
func TestH2spec(t *testing.T) {
	bin := os.Getenv("KEYBROKER_H2SPEC")
	if bin == "" {
		t.Skip("KEYBROKER_H2SPEC is not set: `make h2spec` builds h2spec and runs this")
	}
	// An answer with a body, taking a little while: h2spec's checks of
	// half-closed streams wait for DATA, and its check of the stream limit
	// needs the first streams still open when the one past it arrives.
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(50 * time.Millisecond)
		_, _ = io.WriteString(w, "h2spec\n")
	}), MaxBodyBytes: 64 << 10})
	host, port, _ := net.SplitHostPort(ts.Listener.Addr().String())
	out, err := exec.Command(bin, "-h", host, "-p", port, "-t", "-k", "-o", "5").CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("h2spec: %v", err)
	}
}

// A client that makes the connection owe it control frames faster than
// it reads them (a PING flood) is cut off, with GOAWAY ENHANCE_YOUR_CALM
// once it reads: what the server queues for it is bounded.
func TestControlFlood(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(echo), WriteTimeout: 5 * time.Second})
	c := dialRaw(t, ts)
	const pings = 2000000 // 34 MB of acks: far more than the sockets hold
	sent := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(c.conn, 64<<10)
		fr := http2.NewFramer(bw, nil)
		for i := range pings {
			if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
				sent <- err
				return
			}
		}
		sent <- bw.Flush()
	}()
	// Nothing is read until the pings are sent, or the server, having
	// stopped reading them, closes the connection.
	select {
	case <-sent:
	case <-time.After(60 * time.Second):
		t.Fatal("the flood neither went through nor was cut off")
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	acks := 0
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			if acks >= pings {
				t.Fatalf("every ping answered, then %v", err)
			}
			return // cut off (a reset before the GOAWAY could be read)
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			acks++
			if acks == pings {
				t.Fatalf("all %d pings answered: the flood was not cut off", pings)
			}
		case *http2.GoAwayFrame:
			if f.ErrCode != http2.ErrCodeEnhanceYourCalm {
				t.Fatalf("got %v", f)
			}
			return
		}
	}
}

// An answer the client's flow control holds back is reset after
// WriteTimeout: it does not hold the stream's slot and buffer forever.
func TestAnswerHeldBack(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "held back")
	}), WriteTimeout: 50 * time.Millisecond})
	c := dialRaw(t, ts, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	c.post(1, true)
	if s := c.status(1); s != "200" {
		t.Fatalf("status %s", s)
	}
	c.wantReset(1, http2.ErrCodeCancel)
}

// Trailers after a body cut at the limit do not start the handler again:
// it runs once per stream.
func TestTrailersAfterTheLimit(t *testing.T) {
	release := make(chan struct{})
	var runs atomic.Int32
	ts, _ := start(t, &Server{MaxBodyBytes: 10, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		<-release
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	})})
	c := dialRaw(t, ts)
	c.post(1, false)
	_ = c.fr.WriteData(1, false, make([]byte, 11)) // one byte past the limit (the whole window): the handler starts
	c.hbuf.Reset()
	_ = c.enc.WriteField(hpack.HeaderField{Name: "x-trailer", Value: "1"})
	_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	c.post(3, true) // read after the trailers
	deadline := time.Now().Add(10 * time.Second)
	for runs.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	statuses := map[uint32]string{}
	for len(statuses) < 2 {
		if h, ok := c.next().(*http2.MetaHeadersFrame); ok {
			statuses[h.StreamID] = h.PseudoValue("status")
		}
	}
	if statuses[1] != "413" || statuses[3] != "413" {
		t.Fatalf("statuses %v", statuses)
	}
	if n := runs.Load(); n != 2 { // stream 1 once, stream 3 once
		t.Fatalf("handlers ran %d times for two streams", n)
	}
}

// Trailers on a stream the server has answered itself (a header list too
// long) while its answer waits for the client's window: ignored, and the
// server goes on (it used to start a handler for it, dereferencing the
// stream's missing request: the connection was dropped).
func TestTrailersAfterAnAnswer(t *testing.T) {
	ts, _ := start(t, &Server{Handler: http.HandlerFunc(echo), MaxHeaderBytes: 1000})
	c := dialRaw(t, ts, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	c.headers(1, false, ":method", "POST", ":scheme", "https", ":path", "/", "x-big", strings.Repeat("a", 900))
	c.hbuf.Reset()
	_ = c.enc.WriteField(hpack.HeaderField{Name: "x-trailer", Value: "1"})
	_ = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	if s := c.status(1); s != "431" {
		t.Fatalf("status %s", s)
	}
	c.post(3, true)
	if s := c.status(3); s != "200" {
		t.Fatalf("status %s", s)
	}
}
