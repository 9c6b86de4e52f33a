package h2serve

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzServeConn feeds a connection whatever frames the fuzzer makes after
// the client preface: the server never panics, and the connection ends
// once the client has gone.
func FuzzServeConn(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, frames []byte) {
		s := &Server{Handler: http.HandlerFunc(echo), MaxBodyBytes: 1000, MaxStreams: 4,
			IdleTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second}
		server, client := net.Pipe()
		done := make(chan struct{})
		go func() {
			s.ServeConn(server)
			close(done)
		}()
		go func() { _, _ = io.Copy(io.Discard, client) }()
		_ = client.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = client.Write(append([]byte(http2.ClientPreface), frames...))
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("ServeConn did not return after the client went")
		}
	})
}

// fuzzSeeds are frame sequences a client sends: well-formed requests and
// some of the mistakes the tests name.
func fuzzSeeds() [][]byte {
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	block := func(fields ...string) []byte {
		hbuf.Reset()
		for i := 0; i < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return append([]byte(nil), hbuf.Bytes()...)
	}
	post := block(":method", "POST", ":scheme", "https", ":path", "/", ":authority", "x", "content-length", "3")
	get := block(":method", "GET", ":scheme", "https", ":path", "/a?b", "x-amz-target", "TrentService.Encrypt")
	var seeds [][]byte
	add := func(write func(fr *http2.Framer)) {
		var b bytes.Buffer
		fr := http2.NewFramer(&b, nil)
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
		write(fr)
		seeds = append(seeds, b.Bytes())
	}
	add(func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: post, EndHeaders: true})
		_ = fr.WriteData(1, true, []byte("abc"))
		_ = fr.WriteWindowUpdate(0, 100)
		_ = fr.WriteWindowUpdate(1, 100)
	})
	add(func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: get[:4], EndStream: true})
		_ = fr.WriteContinuation(3, true, get[4:])
		_ = fr.WritePing(false, [8]byte{1})
		_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
		_ = fr.WritePriority(5, http2.PriorityParam{StreamDep: 5})
	})
	add(func(fr *http2.Framer) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: post, EndHeaders: true})
		_ = fr.WriteData(1, false, []byte("abcdef"))
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("x-trailer", "1"), EndStream: true, EndHeaders: true})
		_ = fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		_ = fr.WriteData(7, true, []byte("x"))
	})
	return seeds
}
