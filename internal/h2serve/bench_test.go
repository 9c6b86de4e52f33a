package h2serve

import (
	"bytes"
	"encoding/base64"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchInFlight is about how many requests the client keeps in flight on
// its one connection.
const benchInFlight = 64

// BenchmarkServe: an Encrypt-sized call (a POST of about 1.4 KB with the
// headers of a signed KMS call, answered with about 1.5 KB of JSON) over
// HTTP/2 on one TLS connection on loopback, about 64 calls in flight,
// served by this package (server=h2serve) and by net/http's own HTTP/2
// server (server=net-http), each behind an httptest server and asked by
// net/http's Transport. cpu-ns/op is the process's CPU time (user and
// system) per call: the client runs in the same process, so it counts the
// client's work as well as the server's, the same for both; so do
// allocs/op and B/op.
func BenchmarkServe(b *testing.B) {
	b.Run("server=h2serve", func(b *testing.B) {
		benchServe(b, func(ts *httptest.Server) {
			s := &Server{Handler: ts.Config.Handler}
			s.Configure(ts.Config)
			ts.TLS = ts.Config.TLSConfig
		})
	})
	b.Run("server=net-http", func(b *testing.B) {
		benchServe(b, func(*httptest.Server) {})
	})
}

// benchRequest is an Encrypt of 1 KiB as the AWS SDK sends it; benchAnswer
// is an answer of its size.
var (
	benchRequest = []byte(`{"KeyId":"alias/demo","Plaintext":"` +
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("p"), 1024)) + `"}`)
	benchAnswer = []byte(`{"CiphertextBlob":"` +
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("c"), 1024+60)) +
		`","EncryptionAlgorithm":"SYMMETRIC_DEFAULT","KeyId":"arn:aws:kms:eu-west-1:111122223333:key/demo"}`)
)

const benchAuthorization = "AWS4-HMAC-SHA256 Credential=AKIAKB0000000000DEMO/20250101/eu-west-1/kms/aws4_request, " +
	"SignedHeaders=amz-sdk-invocation-id;amz-sdk-request;content-length;content-type;host;x-amz-date;x-amz-target, " +
	"Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"

// benchServe serves benchRequest's answer over HTTP/2 from an httptest
// server that configure has made ready, and asks it b.N times.
func benchServe(b *testing.B, configure func(*httptest.Server)) {
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || len(body) != len(benchRequest) || r.Header.Get("X-Amz-Target") != "TrentService.Encrypt" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		_, _ = w.Write(benchAnswer)
	}))
	ts.EnableHTTP2 = true
	var conns atomic.Int32
	ts.Config.ConnState = func(_ net.Conn, cs http.ConnState) {
		if cs == http.StateNew {
			conns.Add(1)
		}
	}
	ts.Config.ErrorLog = log.New(io.Discard, "", 0)
	configure(ts)
	ts.StartTLS()
	b.Cleanup(ts.Close)
	client := ts.Client()
	tr := client.Transport.(*http.Transport)
	tr.MaxConnsPerHost = 1 // every call on the one connection
	b.Cleanup(tr.CloseIdleConnections)

	date := time.Now().UTC().Format("20060102T150405Z")
	var failed atomic.Bool
	call := func() bool {
		req, err := http.NewRequest(http.MethodPost, ts.URL+"/", bytes.NewReader(benchRequest))
		if err != nil {
			b.Error(err)
			return false
		}
		req.Header.Set("X-Amz-Target", "TrentService.Encrypt")
		req.Header.Set("X-Amz-Date", date)
		req.Header.Set("Authorization", benchAuthorization)
		req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		resp, err := client.Do(req)
		if err != nil {
			b.Error(err)
			return false
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			b.Errorf("reading the answer: %v", err)
		case resp.StatusCode != http.StatusOK:
			b.Errorf("status %d", resp.StatusCode)
		case n != int64(len(benchAnswer)):
			b.Errorf("answer of %d bytes, want %d", n, len(benchAnswer))
		case resp.ProtoMajor != 2:
			b.Errorf("answered over %s", resp.Proto)
		case resp.Header.Get("Content-Type") != "application/x-amz-json-1.1":
			b.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
		default:
			return true
		}
		return false
	}
	// The connection is set up before the clock starts.
	if !call() {
		b.FailNow()
	}

	b.ReportAllocs()
	b.SetParallelism(max(1, (benchInFlight+runtime.GOMAXPROCS(0)-1)/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	cpu0 := processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if failed.Load() {
				return
			}
			if !call() {
				failed.Store(true)
				return
			}
		}
	})
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	if b.Failed() {
		b.FailNow()
	}
	if n := conns.Load(); n != 1 {
		b.Fatalf("%d connections, want 1", n)
	}
	// Wall time per call on a shared machine counts the waits for a CPU;
	// the process's CPU time per call (the client's and the garbage
	// collector's included) does not.
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
