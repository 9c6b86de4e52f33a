package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/clip"
)

// alpnMissing is how grpc-go's TLS credentials say the server chose no
// HTTP/2 in the handshake: it answered TLS, but is no gRPC server — the
// ops port, typically. grpc-go has no error type for it, only this text.
const alpnMissing = "missing selected ALPN property"

// dialWatch bounds connecting to the broker by --connect-timeout and keeps
// why the latest attempt failed — the dialer's and the TLS handshake's own
// errors, with their types, which grpc-go flattens into the text of an
// Unavailable status — so that the failed RPC can say in words what is
// wrong: a host that does not resolve, a peer that never answers, a port
// that is not keybroker's, a certificate the CA in --ca did not sign.
type dialWatch struct {
	addr    string
	ca      string // the --ca file, for the message ("" with --spiffe-socket)
	timeout time.Duration

	mu  sync.Mutex
	err error // of the latest attempt; nil once one succeeds
	// handshook says a TLS handshake has succeeded on this side.
	handshook bool
}

func (w *dialWatch) set(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
}

func (w *dialWatch) last() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// target is the gRPC target for addr: passthrough, so that the dialer
// below resolves the host itself and a failure keeps its *net.DNSError.
func (w *dialWatch) target(addr string) string { return "passthrough:///" + addr }

// dial connects to addr within the connect timeout.
func (w *dialWatch) dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: w.timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		w.set(err)
	}
	return c, err
}

// connectParams makes --connect-timeout grpc-go's bound on one connection
// attempt, TCP and TLS handshake together (its default is 20 s).
func (w *dialWatch) connectParams() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: w.timeout})
}

// wrap returns creds with their client handshakes watched.
func (w *dialWatch) wrap(creds credentials.TransportCredentials) credentials.TransportCredentials {
	return watchedCreds{creds, w}
}

type watchedCreds struct {
	credentials.TransportCredentials
	w *dialWatch
}

func (c watchedCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	c.w.set(err)
	if err == nil {
		c.w.mu.Lock()
		c.w.handshook = true
		c.w.mu.Unlock()
	}
	return conn, info, err
}

func (c watchedCreds) Clone() credentials.TransportCredentials {
	return watchedCreds{c.TransportCredentials.Clone(), c.w}
}

// explain returns the error of the RPC op that failed Unavailable because
// the connection could not be made, in words and with its exit code; nil
// when no connection attempt failed (the broker itself answered
// Unavailable).
func (w *dialWatch) explain(op string) error {
	err := w.last()
	if err == nil {
		return nil
	}
	fail := func(code int, format string, args ...any) error {
		return &exitError{code, fmt.Errorf("%s: %s", op, fmt.Sprintf(format, args...))}
	}
	addr := clip.Quote(w.addr)
	if dnsErr, ok := errors.AsType[*net.DNSError](err); ok {
		host, _, _ := net.SplitHostPort(w.addr)
		if dnsErr.IsNotFound {
			return fail(exitUnavailable, "unavailable: host %s does not resolve (%v)", clip.Quote(host), err)
		}
		return fail(exitUnavailable, "unavailable: cannot resolve host %s (%v)", clip.Quote(host), err)
	}
	if ne, ok := errors.AsType[net.Error](err); (ok && ne.Timeout()) || errors.Is(err, context.DeadlineExceeded) {
		return fail(exitUnavailable, "unavailable: no answer from %s within %s (--connect-timeout)", addr, w.timeout)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fail(exitUnavailable, "unavailable: nothing listens at %s (connection refused)", addr)
	}
	if errors.Is(err, identity.ErrNotGRPC) || strings.Contains(err.Error(), alpnMissing) {
		return fail(exitUsage, "%s", notGRPCText(w.addr))
	}
	if _, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		if w.ca == "" {
			return fail(exitTLS, "TLS: the broker's certificate at %s is not signed by a CA in the Workload API agent's bundle (%v)", addr, err)
		}
		return fail(exitTLS, "TLS: the broker's certificate at %s is not signed by a CA in --ca %s (%v)", addr, clip.Quote(w.ca), err)
	}
	if he, ok := errors.AsType[x509.HostnameError](err); ok {
		return fail(exitTLS, "TLS: the broker's certificate is not valid for %s (%v); if it names the broker otherwise, give that name with --server-name",
			clip.Quote(he.Host), err)
	}
	if _, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return fail(exitTLS, "TLS: the broker's certificate at %s is not valid (%v)", addr, err)
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		return fail(exitTLS, "TLS: the broker's certificate at %s did not verify (%v)", addr, err)
	}
	if strings.Contains(err.Error(), "refused our certificate") {
		return fail(exitTLS, "TLS: the broker at %s refused the client certificate in --cert: %v", addr, err)
	}
	if _, ok := errors.AsType[tls.AlertError](err); ok {
		return fail(exitTLS, "TLS: the broker at %s refused the handshake (%v): does a CA it trusts sign --cert?", addr, err)
	}
	if _, ok := errors.AsType[*net.OpError](err); ok {
		return fail(exitUnavailable, "unavailable: cannot connect to %s (%v)", addr, err)
	}
	// Anything else failed in the handshake: the credentials refused the
	// peer for a reason of their own.
	return fail(exitTLS, "TLS: the handshake with %s failed (%v)", addr, err)
}

// afterHandshake is a hint for an Unavailable status with text msg that
// came after a TLS handshake succeeded here. In TLS 1.3 the client's side
// of the handshake ends before the broker has checked the client
// certificate; a broker that refuses it sends an alert and closes, and the
// client learns it on its next read ("remote error: tls: …") or, as often,
// only as a write on a closed connection.
func (w *dialWatch) afterHandshake(msg string) string {
	w.mu.Lock()
	handshook := w.handshook
	w.mu.Unlock()
	switch {
	case strings.Contains(msg, "remote error: tls:"):
		return "the broker refused the TLS handshake: does a CA it trusts sign --cert?"
	case handshook && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset by peer")):
		return "the broker closed the connection after the TLS handshake: it may have refused the client certificate in --cert"
	}
	return ""
}

// notGRPCPhrase is how identity's client handshake says a server offered
// no HTTP/2, in a status text that lost the error's type.
const notGRPCPhrase = "does not speak gRPC"

func notGRPCText(addr string) string {
	return fmt.Sprintf("%s is not a keybroker gRPC port (it answered without HTTP/2 — is it the ops/metrics port?)", clip.Quote(addr))
}

// statusHint puts in words what statusExit finds, for the errors that did
// not pass through a dialWatch.
func statusHint(st *status.Status) string {
	if st.Code() != codes.Unavailable {
		return ""
	}
	msg := st.Message()
	switch {
	case strings.Contains(msg, alpnMissing), strings.Contains(msg, notGRPCPhrase):
		return "the address is not a keybroker gRPC port: it answered without HTTP/2 — is it the ops/metrics port?"
	case strings.Contains(msg, "x509: certificate signed by unknown authority"):
		return "the broker's certificate is not signed by a CA in --ca"
	case strings.Contains(msg, "remote error: tls:"):
		return "the broker refused the TLS handshake: does a CA it trusts sign --cert?"
	}
	return ""
}

// statusExit is the exit code for an Unavailable status whose text shows a
// connection that failed in TLS, for errors that did not pass through a
// dialWatch (the SDK's streams) or that came after the handshake (the
// broker refusing the client certificate, which TLS 1.3 reports on the
// first read).
func statusExit(st *status.Status) (int, bool) {
	if st.Code() != codes.Unavailable {
		return 0, false
	}
	msg := st.Message()
	switch {
	case strings.Contains(msg, alpnMissing), strings.Contains(msg, notGRPCPhrase):
		return exitUsage, true
	case strings.Contains(msg, "x509: "), strings.Contains(msg, "tls: "):
		return exitTLS, true
	}
	return 0, false
}
