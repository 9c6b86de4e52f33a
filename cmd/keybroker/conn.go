package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"crypto/tls"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/internal/forwardproof"
	"github.com/keybroker/keybroker/internal/hostport"
)

// Environment variables read when the matching flag is not given.
const (
	envAddr = "KEYBROKER_ADDR"
	envCA   = "KEYBROKER_CA"
	envCert = "KEYBROKER_CERT"
	envKey  = "KEYBROKER_KEY"
	// envSPIFFESocket is --spiffe-socket's; SPIFFE_ENDPOINT_SOCKET alone
	// selects nothing.
	envSPIFFESocket = client.EnvSPIFFESocket
)

// defaultConnectTimeout is --connect-timeout's default: a broker that
// has not accepted and finished the TLS handshake by then is not there.
// (grpc-go's own default is 20 s.)
const defaultConnectTimeout = 5 * time.Second

// maxRecvMessage bounds a response. gRPC's default of 4 MiB is too small for
// a Decrypt of a 4 MiB plaintext plus the response's framing.
const maxRecvMessage = 16 << 20

// addClientFlags adds the connection flags and --output to fs. The flag
// values live in the flag set; connect reads them back with their env
// fallbacks.
func (a *app) addClientFlags(fs *pflag.FlagSet) {
	fs.String("addr", "", "broker address, host:port (env "+envAddr+")")
	fs.String("ca", "", "PEM file of the CA certificates that sign the broker (env "+envCA+")")
	fs.String("cert", "", "PEM file of the client certificate (env "+envCert+")")
	fs.String("tls-key", "", "PEM file of the client certificate's private key (env "+envKey+")")
	fs.String("spiffe-socket", "", "SPIFFE Workload API agent socket, unix:///path, to take the identity from instead of --ca, --cert and --tls-key (env "+envSPIFFESocket+")")
	fs.String("server-name", "", "also verify that the broker's certificate names this host (the broker is always verified by its SPIFFE id)")
	fs.DurationVar(&a.timeout, "timeout", 30*time.Second, "time limit for the command's RPCs; 0 means none")
	fs.DurationVar(&a.connectTimeout, "connect-timeout", defaultConnectTimeout, "time limit for connecting to the broker (TCP connect and TLS handshake)")
	a.addOutputFlag(fs)
}

// setting is the value of flag if it was given, else of the environment
// variable envVar ("" for none).
func (a *app) setting(cmd *cobra.Command, flag, envVar string) string {
	if f := cmd.Flags().Lookup(flag); f != nil && f.Changed {
		return f.Value.String()
	}
	if envVar == "" {
		return ""
	}
	return a.env.getenv(envVar)
}

// session is a connection to the broker for one command.
type session struct {
	addr string
	id   *identity.Live
	tls  *tls.Config // for HTTPS to the operations port (bench --metrics)
	// serverName is --server-name: the host name checked as well.
	serverName string
	conn       *grpc.ClientConn
	kb         kbv1.KeyBrokerClient
	admin      kbv1.KeyAdminClient
	parent     context.Context
	timeout    time.Duration
	// watch has why connecting failed, for fail to put in words.
	watch *dialWatch
}

// connect checks the connection settings and makes the client. Nothing is
// dialled until the first RPC, so usage errors come before network errors.
func (a *app) connect(cmd *cobra.Command) (*session, error) {
	addr := a.setting(cmd, "addr", envAddr)
	files := identity.TLSFiles{
		CA:   a.setting(cmd, "ca", envCA),
		Cert: a.setting(cmd, "cert", envCert),
		Key:  a.setting(cmd, "tls-key", envKey),
	}
	socket := a.setting(cmd, "spiffe-socket", envSPIFFESocket)
	var missing []string
	if addr == "" {
		missing = append(missing, "--addr (or "+envAddr+")")
	}
	if socket != "" {
		var both []string
		for _, m := range []struct{ value, flag string }{{files.CA, "--ca"}, {files.Cert, "--cert"}, {files.Key, "--tls-key"}} {
			if m.value != "" {
				both = append(both, m.flag)
			}
		}
		if len(both) > 0 {
			return nil, usageErrorf("--spiffe-socket (or %s) and %s (or their environment variables) are both given: take the identity from the Workload API agent or from files, not both", envSPIFFESocket, strings.Join(both, ", "))
		}
	} else {
		for _, m := range []struct{ value, flag, env string }{
			{files.CA, "--ca", envCA},
			{files.Cert, "--cert", envCert},
			{files.Key, "--tls-key", envKey},
		} {
			if m.value == "" {
				missing = append(missing, m.flag+" (or "+m.env+")")
			}
		}
	}
	if len(missing) > 0 {
		hint := ""
		if socket == "" && (len(missing) > 1 || addr != "") {
			hint = " (the --ca, --cert and --tls-key files, or --spiffe-socket for a SPIFFE Workload API agent)"
		}
		return nil, usageErrorf("missing %s: keybroker always uses mutual TLS%s", strings.Join(missing, ", "), hint)
	}
	if err := hostport.Check(addr); err != nil {
		return nil, usageErrorf("--addr: %v", err)
	}
	if a.timeout < 0 {
		return nil, usageErrorf("--timeout must not be negative")
	}
	if a.connectTimeout <= 0 {
		return nil, usageErrorf("--connect-timeout must be positive")
	}
	src, err := sourceFor(cmd.Context(), files, socket, a.connectTimeout)
	if err != nil {
		if socket != "" {
			return nil, usageErrorf("--spiffe-socket: %v", err)
		}
		return nil, usageErrorf("TLS client configuration: %v", err)
	}
	if err := identity.CheckSelf(src.Current(), identity.RoleClient, identity.Identity{}); err != nil {
		src.Close()
		if socket != "" {
			return nil, usageErrorf("--spiffe-socket: %v", workload.ExplainSelf(err, socket))
		}
		return nil, usageErrorf("--cert: %v", err)
	}
	id := identity.NewLive(src, nil, nil)
	serverName := a.setting(cmd, "server-name", "")
	watch := &dialWatch{addr: addr, ca: files.CA, timeout: a.connectTimeout}
	conn, err := dialBroker(addr, id, serverName, watch)
	if err != nil {
		id.Close()
		return nil, usageErrorf("--addr %s: %v", clip.Quote(addr), err)
	}
	return &session{
		watch:      watch,
		addr:       addr,
		id:         id,
		serverName: serverName,
		tls:        id.ClientTLS(acceptNode, serverName),
		conn:       conn,
		kb:         kbv1.NewKeyBrokerClient(conn),
		admin:      kbv1.NewKeyAdminClient(conn),
		parent:     cmd.Context(),
		timeout:    a.timeout,
	}, nil
}

// sourceFor is where a command's identity comes from: the Workload API
// agent at socket (--spiffe-socket), waited for as long as a connection
// (--connect-timeout), and followed while the command runs; or else the
// --ca, --cert and --tls-key files, read once (a command is short).
func sourceFor(ctx context.Context, files identity.TLSFiles, socket string, wait time.Duration) (identity.Source, error) {
	if socket != "" {
		return workload.NewSource(ctx, socket, workload.Options{Timeout: wait})
	}
	return identity.NewFileSource(files, identity.FileOptions{ReloadInterval: -1})
}

// acceptNode is who a command may talk to: an edge or a central node of
// its trust domain, known by SPIFFE id (so --addr may be an IP address).
var acceptNode = identity.AcceptKinds(identity.Edge, identity.Central)

// dialBroker makes a client connection to addr; nothing is dialled until
// the first RPC. The node is verified by its SPIFFE id, and by host name
// too when serverName is given (--server-name). Calls an edge must forward
// to the central tier are signed with the client certificate's key when
// the edge asks for a forward proof, as the SDK does. watch bounds the
// connection attempt by --connect-timeout and keeps why it failed.
func dialBroker(addr string, id *identity.Live, serverName string, watch *dialWatch) (*grpc.ClientConn, error) {
	creds, signer := id.DialCredentials(acceptNode, serverName)
	return grpc.NewClient(watch.target(addr),
		grpc.WithTransportCredentials(watch.wrap(creds)),
		grpc.WithContextDialer(watch.dial),
		watch.connectParams(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMessage)),
		grpc.WithChainUnaryInterceptor(forwardproof.NewInterceptor(signer, nil).Unary),
	)
}

func (s *session) close() {
	_ = s.conn.Close()
	_ = s.id.Close()
}

// sdk returns a Go SDK client bound to this session's node alone (no
// routing: the command talks to --addr), for the client-side streams.
func (s *session) sdk(ctx context.Context) (*client.Client, error) {
	return client.New(ctx, client.Config{Addrs: []string{s.addr}, Source: s.id.Source(), Direct: true, MaxAttempts: 1,
		DialOptions: []grpc.DialOption{s.watch.connectParams(), grpc.WithContextDialer(s.watch.dial)}})
}

// context bounds the command's RPCs by --timeout. Commands take it after
// reading their input, so a slow stdin does not eat the time limit.
func (s *session) context() (context.Context, context.CancelFunc) {
	if s.timeout == 0 {
		return context.WithCancel(s.parent)
	}
	return context.WithTimeout(s.parent, s.timeout)
}

// invoke runs one RPC under the command's --timeout and wraps its error
// for the exit code and message.
func invoke[Req, Resp any](s *session, op string, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := s.context()
	defer cancel()
	resp, err := rpc(ctx, req)
	if err != nil {
		var zero Resp
		return zero, s.fail(ctx, op, err)
	}
	return resp, nil
}

// fail wraps the error of the RPC op.
func (s *session) fail(ctx context.Context, op string, err error) error {
	st, _ := status.FromError(err)
	e := &rpcError{op: op, st: st}
	// The server may report DeadlineExceeded an instant before the client's
	// own timer fires, so ctx.Err() may not be set yet: a deadline that is
	// all but spent counts as run out.
	dl, hasDeadline := ctx.Deadline()
	spent := errors.Is(ctx.Err(), context.DeadlineExceeded) || (hasDeadline && time.Until(dl) < 100*time.Millisecond)
	if st.Code() == codes.DeadlineExceeded && spent {
		e.hint = fmt.Sprintf("--timeout %s ran out", s.timeout)
	}
	if st.Code() == codes.Unavailable {
		if ce := s.watch.explain(op); ce != nil {
			return ce
		}
		if hint := s.watch.afterHandshake(st.Message()); hint != "" {
			e.hint = hint
		}
	}
	return e
}
