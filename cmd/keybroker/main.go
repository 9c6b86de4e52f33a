// Command keybroker is keybroker's one binary. This file and its neighbours
// make the command-line client of the KeyBroker and KeyAdmin gRPC services;
// the server commands (central, edge, dev) live in files of their own and are
// added to the root in [newRootCmd].
//
// # Commands
//
//	keybroker key create|list|describe|rotate|update|disable|enable|schedule-deletion|cancel-deletion
//	keybroker encrypt|decrypt|reencrypt|datakey
//	keybroker sign|verify|mac|verify-mac|random
//	keybroker lookup --key K --op OP
//	keybroker nodes
//	keybroker node enroll|update|remove ID
//	keybroker audit verify FILE
//	keybroker bench --op OP --key KEY [--compare-noop] [--output json]
//	keybroker version
//
// and the server commands:
//
//	keybroker central --config central.yaml
//	keybroker edge --config edge.yaml
//	keybroker dev [--data DIR] [--port N] [--backend URI]   a whole local cluster, no set-up
//	keybroker root create KEY-URI --algorithm ALG
//	keybroker kms-plugin --listen SOCKET --key KEY --addr EDGE   the Kubernetes KMS v2 plugin
//	keybroker ca init --trust-domain TD --dir DIR [--key KEY-URI]
//	keybroker cert issue|renew|show
//
// Every command's --help has examples.
//
// # Connection
//
// Client commands always speak gRPC over mutual TLS; there is no insecure
// mode. The broker address and the TLS files come from flags or, for flags
// not given, the environment:
//
//	--addr     KEYBROKER_ADDR   host:port of any node
//	--ca       KEYBROKER_CA     PEM CA certificates that sign the broker
//	--cert     KEYBROKER_CERT   PEM client certificate (SPIFFE URI SAN)
//	--tls-key  KEYBROKER_KEY    PEM private key of that certificate
//
// The private-key flag is --tls-key, not --key, because --key names the
// managed key in encrypt, sign, mac and the other crypto commands.
// --timeout bounds the RPCs of one command (default 30s; 0 means none);
// --connect-timeout bounds connecting, TCP and TLS handshake (default 5s).
//
// --addr is host:port with a port of 1-65535 (an IPv6 host in brackets,
// [::1]:7700), checked before anything is dialled. A connection that fails
// is said in words: a host that does not resolve, no answer within
// --connect-timeout, nothing listening, a port that answers TLS without
// HTTP/2 (an ops port), a broker certificate the CA in --ca did not sign.
// Errors quote at most 64 bytes of any id or address given, with its length.
//
// # Binary input and output
//
// Binary input (plaintext, ciphertext, messages) is read from --in, or stdin.
// A binary result is written raw to --out FILE (mode 0600), raw to stdout
// when stdout is not a terminal, and as base64 and a newline when it is.
// --output json prints one JSON object per result, binary fields in base64.
// The API's size limits are checked before anything is sent: plaintext 4 MiB,
// ciphertext 4 MiB + 1 KiB, signed and MACed messages 64 KiB, random 1-1024
// bytes.
//
// # Exit codes
//
//	0  success
//	1  any other error
//	2  usage: bad flags or arguments, missing or unreadable TLS configuration,
//	   an --addr that is not host:port or is not a keybroker gRPC port
//	3  denied: PermissionDenied or Unauthenticated
//	4  not found: NotFound
//	5  unavailable: Unavailable or DeadlineExceeded (also when --timeout runs out)
//	6  invalid input: InvalidArgument, FailedPrecondition or AlreadyExists (a
//	   bad ciphertext, a disabled key, a key that exists), and input over the
//	   API's limits, refused locally
//	7  verification failed: verify or verify-mac answered invalid, or audit
//	   verify found the log broken, or cert show found a certificate keybroker
//	   would refuse
//	8  TLS: the broker's certificate did not verify (not signed by a CA in
//	   --ca, not for the host in --addr, expired) or the broker refused the
//	   client certificate
//	9  truncated: a streaming ciphertext ends before its final segment (cut
//	   short, or its writer was interrupted)
//	130, 143  interrupted by SIGINT (Ctrl-C), SIGTERM: no output written
//	   (--out FILE is not created; a stream to stdout stops without its
//	   final segment, so it never decrypts as complete); a second signal
//	   kills at once
//
// Errors go to stderr as "keybroker: <message>" and carry the broker's
// message; they never contain input data or key material.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/keybroker/keybroker/internal/serve"
)

func main() {
	serve.TuneGC(os.Getenv)
	// SIGINT or SIGTERM cancels every command's context (a stream stops
	// without its final segment, exit 128+N); a second one kills.
	ctx, stop := interruptContext(context.Background())
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// env is what a command sees of its process. Commands use it instead of the
// os package so that tests run them in-process, in parallel.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// stdoutIsTerminal makes binary results print as base64.
	stdoutIsTerminal bool
	// stderrIsTerminal draws progress lines for streams.
	stderrIsTerminal bool
}

// run runs the keybroker command line args and returns the exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	return execute(ctx, &env{
		stdin:            stdin,
		stdout:           stdout,
		stderr:           stderr,
		getenv:           getenv,
		stdoutIsTerminal: isTerminal(stdout),
		stderrIsTerminal: isTerminal(stderr),
	}, args)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// execute runs args against a fresh command tree and reports the error, if
// any, on stderr.
func execute(ctx context.Context, e *env, args []string) int {
	root := newRootCmd(e)
	// An error returned before a command's Run starts comes from cobra
	// (unknown command, bad flag, wrong arguments, missing required flag):
	// a usage error. Marking the start lets exitCode tell them apart from
	// untyped errors the commands return.
	started := false
	markStart(root, &started)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err = interrupted(ctx, err); err == nil {
		return exitOK
	}
	code := exitCode(err, started)
	fmt.Fprintf(e.stderr, "keybroker: %v\n", err)
	if code == exitUsage && cmd != nil {
		fmt.Fprintf(e.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

func markStart(c *cobra.Command, started *bool) {
	if f := c.RunE; f != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			*started = true
			return f(cmd, args)
		}
	} else if f := c.Run; f != nil {
		c.Run = func(cmd *cobra.Command, args []string) {
			*started = true
			f(cmd, args)
		}
	}
	for _, sub := range c.Commands() {
		markStart(sub, started)
	}
}

const rootLong = `keybroker manages keys (KeyAdmin) and encrypts, decrypts, signs and MACs
with them (KeyBroker), talking to any node of a keybroker cluster.

Client commands always use gRPC over mutual TLS; there is no insecure mode.
Flags win over the environment:
  --addr      KEYBROKER_ADDR   host:port of any node
  --ca        KEYBROKER_CA     PEM CA certificates that sign the broker
  --cert      KEYBROKER_CERT   PEM client certificate
  --tls-key   KEYBROKER_KEY    PEM private key of the client certificate
(The private key flag is --tls-key because --key names the managed key.)
--addr is host:port, an IPv6 host in brackets: [::1]:7700.
--connect-timeout (default 5s) bounds connecting; --timeout (default 30s)
the command's calls.

Binary input is read from --in, or stdin. Binary results go raw to --out FILE,
raw to stdout when it is not a terminal, and as base64 when it is.
--output json prints one JSON object per result, binary fields in base64.

Exit codes:
  0  success
  1  any other error
  2  usage: bad flags or arguments, missing or unreadable TLS configuration,
     an --addr that is not host:port or is not a keybroker gRPC port
  3  denied: the broker answered PermissionDenied or Unauthenticated
  4  not found: NotFound
  5  unavailable: Unavailable or DeadlineExceeded (also when --timeout runs out)
  6  invalid input: InvalidArgument, FailedPrecondition or AlreadyExists (a
     bad ciphertext, a disabled key, a key that exists), or input over the
     API's limits, refused locally
  7  verification failed: verify or verify-mac found the signature or MAC
     invalid, audit verify found the log broken, or cert show found a
     certificate keybroker would refuse
  8  TLS: the broker's certificate did not verify (not signed by a CA in
     --ca, not for the host in --addr, expired) or the broker refused the
     client certificate
  9  truncated: a streaming ciphertext ends before its final segment (cut
     short, or its writer was interrupted)
  130, 143  interrupted by SIGINT (Ctrl-C) or SIGTERM: no output written
     (--out FILE is not created; a stream to stdout stops without its final
     segment, so it never decrypts as complete); a second signal kills at once`

// newRootCmd builds the whole command tree for one run.
func newRootCmd(e *env) *cobra.Command {
	a := newApp(e)
	root := &cobra.Command{
		Use:   "keybroker",
		Short: "keybroker: a distributed key-management broker",
		Long:  rootLong,
		Example: `  export KEYBROKER_ADDR=broker.example.com:8443 KEYBROKER_CA=ca.crt \
         KEYBROKER_CERT=alice.crt KEYBROKER_KEY=alice.key
  keybroker key create payments
  echo -n 'card 4111' | keybroker encrypt --key payments --context tenant=42 > card.enc
  keybroker decrypt --context tenant=42 --in card.enc`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })

	root.AddCommand(
		a.keyCmd(),
		a.encryptCmd(),
		a.decryptCmd(),
		a.reencryptCmd(),
		a.datakeyCmd(),
		a.signCmd(),
		a.verifyCmd(),
		a.macCmd(),
		a.verifyMACCmd(),
		a.randomCmd(),
		a.lookupCmd(),
		a.nodesCmd(),
		a.nodeCmd(),
		a.accessKeyCmd(),
		a.auditCmd(),
		a.benchCmd(),
		a.versionCmd(),
	)
	root.AddCommand(newCentralCmd(e), newEdgeCmd(e), newDevCmd(e), newRootKeyCmd(e), newKMSPluginCmd(e))
	root.AddCommand(newCACmd(e), newCertCmd(e))
	suggestSubcommands(root)
	// Server commands, one line each. They take the streams and environment
	// from e, and the process context
	// (cancelled on SIGINT and SIGTERM) from cmd.Context(). An error returned
	// from RunE exits 1, or with the code of an *exitError; one returned
	// before RunE starts (flags, Args, PreRunE) is a usage error, exit 2.
	return root
}

// app holds the flags shared by the client commands of one run.
type app struct {
	env     *env
	timeout time.Duration
	// connectTimeout bounds connecting to the broker: TCP and TLS.
	connectTimeout time.Duration
	output         *enumValue
}

func newApp(e *env) *app {
	return &app{env: e, output: newEnum("text", "text", "json")}
}

func (a *app) jsonOutput() bool { return a.output.value == "json" }

// addOutputFlag adds --output to fs.
func (a *app) addOutputFlag(fs *pflag.FlagSet) {
	fs.Var(a.output, "output", "output format: text, or json for scripts (one object per result)")
}
