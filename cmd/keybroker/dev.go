package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/internal/atomicfile"
	"github.com/keybroker/keybroker/internal/etcdproc"
	"github.com/keybroker/keybroker/internal/softhsm"
	"github.com/keybroker/keybroker/managed"
)

// Defaults of keybroker dev.
const (
	devDefaultData = "keybroker-dev"
	devDefaultPort = 7700
	devDefaultHost = "127.0.0.1"
	// devEdges is the number of edges dev runs.
	devEdges = 2
	// devMaxCentrals is the most central nodes --centrals takes: with the
	// edges, their gRPC ports stay below the first operations port.
	devMaxCentrals = devcluster.MaxFixedEdges - devEdges + 1
	// devReadyTimeout bounds the wait for a started cluster to be ready:
	// the edges' first synchronisation and the demo key.
	devReadyTimeout = 2 * time.Minute
	// devShutdownTimeout bounds the graceful stop.
	devShutdownTimeout = 30 * time.Second
)

// The demo key keybroker dev creates when it is missing.
const (
	demoKeyID   = "demo"
	demoKeyDesc = "keybroker dev's demo key"
)

// devEnvFile is the file, in the data directory, the environment is
// written to.
const devEnvFile = "env"

// devPortSpan is how far above --port the last port a cluster with
// centrals central nodes takes lies: the last node's operations port.
func devPortSpan(centrals int) int { return devcluster.OpsPortOffset + devEdges + centrals - 1 }

const devLong = `Run a complete local keybroker cluster in this one process, with no set-up:
a central node, two edges labelled with the regions us and eu, a development
CA and certificates, a demo policy (admins may do everything, clients may use
every key, edges may hold every key's material) and a demo key, "demo"
(aes-256-gcm, derive mode), created when it does not exist.

Everything lives in --data (default ./keybroker-dev) and is reused by the next
start: the same CA, root keys, registry, policy (policy.cedar is yours to
edit; the central node re-reads it) and demo key. A directory serves one
cluster at a time.

Ports are fixed so that addresses stay valid across restarts. With --port N:
  central   gRPC N     ops N+10
  edge-us   gRPC N+1   ops N+11
  edge-eu   gRPC N+2   ops N+12
The ops ports serve /healthz, /readyz and /metrics over HTTPS with client
certificates. --port 0 lets the system choose free ports, different at each
start. A port already in use stops dev with an error naming it.

--centrals N (default 1) runs N central nodes instead of one — central,
central-2, …, central-N, each with its own certificate, data directory and
audit log, on the same root keys — sharing their registry in etcd, as a
deployment's central tier does (docs/deploy.md). central-2 takes gRPC port
N+3 and ops N+13, central-3 N+4 and N+14, and so on. Edge-us starts at
central and edge-eu at central-2, and each fails over to the others. dev runs
one etcd member itself, from the etcd binary (Debian and Ubuntu: apt install
etcd-server; $KEYBROKER_ETCD names another binary), on free loopback ports
with its data in DIR/etcd, and stops it when dev stops; or give --etcd with
the client URLs of an etcd already running on loopback (plain http). dev
keeps its objects under the prefix /keybroker-dev/. A data directory keeps
the store it was first started with: one started with one central (bbolt)
is refused with --centrals 2 or more, and the other way round.

When the cluster is ready (the central node up, both edges synchronised, the
demo key in place), dev writes DIR/env (mode 0600): export lines for
KEYBROKER_ADDR (the us edge: applications talk to edges), KEYBROKER_CA,
KEYBROKER_CERT and KEYBROKER_KEY (the admin identity, which may create, rotate
and use keys), so that after 'source DIR/env' every keybroker command talks to
the cluster; and what the AWS tools read: every node serves the AWS KMS API (on
its gRPC port + 20), and the file exports AWS_ENDPOINT_URL_KMS (the us edge),
AWS_CA_BUNDLE, AWS_REGION, AWS_DEFAULT_REGION and a dev access key
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) acting as client/app, scoped to the
us edge (made once, kept in DIR/aws-access-key.json, mode 0600), and defines a
shell function aws that names the endpoint for 'aws kms …', since AWS CLIs
before 2.13 ignore AWS_ENDPOINT_URL_KMS. It then prints the nodes, their ops URLs, where the app identity
is (certs/app.crt, certs/app.key: a client that may use keys but not manage
them) and commands to try. Logs go to stderr.

Ctrl-C or SIGTERM stops the cluster gracefully and exits 0. The data and the
env file stay: with fixed ports the env file is valid again at the next start
(with --port 0 the next start rewrites it).

--softhsm puts the central node's root keys on a SoftHSM2 token that dev makes
in DIR/softhsm (label keybroker-dev, random PINs in 0600 files there) and
reuses at the next start; SoftHSM2 must be installed (the softhsm2 package).
dev points SOFTHSM2_CONF at the token's configuration for its own process.

--backend puts the central node's root keys in another root of trust instead
of the softkms keystore in DIR. Give the backend alone, without a key:
  softkms:path=/ABS/keystore.json;kek-source=/ABS/kek
  pkcs11:token=LABEL?module-path=/ABS/module.so&pin-source=/ABS/pin-file
      (or serial= or slot-id= to select the token; SoftHSM2 finds its
      tokens through SOFTHSM2_CONF, else /etc/softhsm/softhsm2.conf)
  awskms:region=REGION[;endpoint=URL]      credentials from the AWS SDK's usual sources
  gcpkms:projects/P/locations/L/keyRings/R[;endpoint=HOST:PORT]
The cluster needs an HMAC-SHA256 root key for derive-mode keys and an AES-256
one for wrap-mode keys, named root-prf and root-aes (PKCS#11 labels; AWS
aliases alias/keybroker-dev-root-prf and alias/keybroker-dev-root-aes; GCP
CryptoKeys root-prf and root-aes in the key ring). Missing ones are created
when the backend can; otherwise dev stops and lists what to create. A data
directory stays on the root of trust it was first started on.

docs/deploy.md sets up the same by hand for a real deployment: SoftHSM2
tokens, keybroker root create, a CA (keybroker ca init) and certificates
(keybroker cert issue), central, edges and a production policy.`

const devExample = `  keybroker dev
  keybroker dev --data /tmp/kb --port 9000 --log-level debug
  keybroker dev --port 0 --log-format json 2>dev.log

  # the root keys on a SoftHSM2 token dev makes in keybroker-dev/softhsm
  keybroker dev --softhsm

  # the root keys on a SoftHSM2 token of your own
  softhsm2-util --init-token --free --label kb --so-pin 12345678 --pin 1234
  echo 1234 > ~/kb.pin
  keybroker dev --backend "pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=$HOME/kb.pin"

  # three central nodes on etcd (apt install etcd-server)
  keybroker dev --centrals 3 --data keybroker-dev-3

  # then, in another shell
  source keybroker-dev/env
  keybroker encrypt --key demo --out hello.enc <<<hello
  keybroker decrypt --in hello.enc | cat`

type devFlags struct {
	data, host, backend string
	port, centrals      int
	etcd                []string
	softhsm             bool
	logLevel, logFormat *enumValue
}

func newDevCmd(e *env) *cobra.Command {
	f := devFlags{
		logLevel:  newEnum(config.DefaultLogLevel, "debug", "info", "warn", "error"),
		logFormat: newEnum("text", "text", "json"),
	}
	cmd := &cobra.Command{
		Use:     "dev",
		Short:   "Run a complete local cluster (central, two edges, CA, policy, demo key) in one process",
		Long:    devLong,
		Example: devExample,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			return runDev(cmd.Context(), e, f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.data, "data", devDefaultData, "directory holding the cluster's CA, keys, policy and data; created if missing, reused when it exists")
	fs.IntVar(&f.port, "port", devDefaultPort, fmt.Sprintf("central gRPC port; the edges take the next two, further centrals the next ones, ops ports are %d above; 0 means system-chosen ports", devcluster.OpsPortOffset))
	fs.IntVar(&f.centrals, "centrals", 1, fmt.Sprintf("number of central nodes, 1..%d; more than one share an etcd store (see above)", devMaxCentrals))
	fs.StringSliceVar(&f.etcd, "etcd", nil, "client URLs (http://127.0.0.1:2379,…) of a running etcd on loopback for the centrals to share, instead of one dev runs")
	fs.StringVar(&f.host, "host", devDefaultHost, "address every node listens on and clients dial")
	fs.StringVar(&f.backend, "backend", "", "root of trust URI for the central node (see above); default: a softkms keystore in --data")
	fs.BoolVar(&f.softhsm, "softhsm", false, "put the root keys on a SoftHSM2 token made in --data/softhsm (needs SoftHSM2 installed)")
	fs.Var(f.logLevel, "log-level", "least severe log level written to stderr")
	fs.Var(f.logFormat, "log-format", "log format on stderr: text for people, json for collectors")
	return cmd
}

// check refuses bad flags before anything is created.
func (f *devFlags) check() error {
	if f.centrals < 1 || f.centrals > devMaxCentrals {
		return usageErrorf("--centrals %d: give 1..%d", f.centrals, devMaxCentrals)
	}
	if span := devPortSpan(f.centrals); f.port < 0 || f.port > 65535-span {
		return usageErrorf("--port %d: give 0 (system-chosen ports) or 1..%d: the cluster takes --port up to --port+%d", f.port, 65535-span, span)
	}
	if f.data == "" {
		return usageErrorf("--data must name a directory")
	}
	if f.host == "" {
		return usageErrorf("--host must name an address")
	}
	if f.softhsm && f.backend != "" {
		return usageErrorf("--softhsm and --backend both name the root of trust: give one")
	}
	for _, ep := range f.etcd {
		if err := devEtcdEndpoint(ep); err != nil {
			return usageErrorf("--etcd %s: %v", ep, err)
		}
	}
	if f.backend != "" {
		u, err := backends.ParseKeyURI(f.backend)
		if err != nil {
			return usageErrorf("--backend: %v", err)
		}
		if u.Key() != "" {
			return usageErrorf("--backend names a key (%s): give the backend alone; the dev cluster names its root keys itself", u.Key())
		}
	}
	return nil
}

// devEtcdEndpoint refuses an --etcd endpoint dev cannot use: dev speaks
// plain http to etcd, which only loopback may carry.
func devEtcdEndpoint(ep string) error {
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.Path != "" && u.Path != "/" {
		return errors.New("give a URL http://host:port")
	}
	host, _, err := net.SplitHostPort(u.Host)
	if ip := net.ParseIP(host); err != nil || host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return errors.New("not a loopback address: dev speaks plain http to etcd, which only loopback may carry")
	}
	return nil
}

func runDev(ctx context.Context, e *env, f devFlags) error {
	log := config.Log{Level: f.logLevel.value, Format: f.logFormat.value}.NewLogger(e.stderr)
	dir, err := filepath.Abs(f.data)
	if err != nil {
		return err
	}
	var etcd *devcluster.EtcdOptions
	switch {
	case len(f.etcd) > 0:
		etcd = &devcluster.EtcdOptions{Endpoints: f.etcd}
	case f.centrals > 1:
		// At once, before a backend or a directory is touched.
		if _, err := etcdproc.Binary(); err != nil {
			return fmt.Errorf("--centrals %d: the central nodes share an etcd store, which dev runs from the etcd binary, and %v "+
				"(or give --etcd with the client URLs of a running etcd)", f.centrals, err)
		}
	}
	// Say at once that work has begun: opening a backend (a SoftHSM token,
	// a cloud KMS) and making a fresh directory's CA and keys take a while,
	// and until the ready summary nothing else is printed on a quiet start.
	log.Info("keybroker dev starting", "data", dir, "host", f.host, "port", f.port)
	backend := f.backend
	if f.softhsm {
		if backend, err = devSoftHSM(ctx, dir, log); err != nil {
			return err
		}
	}
	// Start gets the process's context, not one with the start's time
	// limit: a backend may keep the context it was opened with (a cloud
	// client's credentials), and ending it would break the running node.
	c, err := devcluster.Start(ctx, devcluster.Options{Dir: dir, Host: f.host, BasePort: f.port, Backend: backend, Logger: log,
		Centrals: f.centrals, Etcd: etcd, AWS: &devcluster.AWSOptions{}})
	if err != nil {
		if ctx.Err() != nil {
			log.Info("interrupted before the cluster was ready")
			return nil
		}
		if pe, ok := errors.AsType[*devcluster.PortInUseError](err); ok {
			last := devEdges + f.centrals - 1
			return fmt.Errorf("port %d (%s) is already in use: is another keybroker dev running? "+
				"Choose other ports with --port N (the cluster takes N..N+%d and N+%d..N+%d), or --port 0 for any free ones",
				pe.Port, pe.Use, last, devcluster.OpsPortOffset, devcluster.OpsPortOffset+last)
		}
		return err
	}
	readyCtx, cancel := context.WithTimeout(ctx, devReadyTimeout)
	defer cancel()
	demo, created, err := prepareDev(readyCtx, c)
	if err != nil {
		stopDev(ctx, c, log)
		if ctx.Err() != nil {
			log.Info("interrupted before the cluster was ready")
			return nil
		}
		return err
	}
	awsKey, err := ensureDevAWSKey(readyCtx, c, dir)
	if err != nil {
		stopDev(ctx, c, log)
		return err
	}
	cancel()
	envPath := filepath.Join(dir, devEnvFile)
	if err := writeDevEnv(envPath, c, awsKey); err != nil {
		stopDev(ctx, c, log)
		return err
	}
	if err := printDevReady(e.stdout, c, envPath, demo, created); err != nil {
		stopDev(ctx, c, log)
		return err
	}
	log.Info("dev cluster ready", "dir", dir, "env", envPath)

	// Each node's servers report on Done only when they stop on their own
	// before Shutdown (and with nil after it, which ends these
	// goroutines).
	stopped := make(chan error, 2*(len(c.Centrals)+len(c.Edges))+1)
	watch := func(name string, done <-chan error) {
		go func() {
			err := <-done
			stopped <- fmt.Errorf("%s stopped serving: %v", name, err)
		}()
	}
	for i, n := range c.Centrals {
		watch(devcluster.CentralName(i), n.Done())
	}
	if done := c.EtcdDone(); done != nil {
		go func() {
			<-done
			stopped <- fmt.Errorf("etcd exited (its log: %s)", c.EtcdMember().LogFile)
		}()
	}
	for i, n := range c.Edges {
		watch(c.EdgeSpecs()[i].Name, n.Done())
	}
	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-stopped:
		log.Error("a node stopped; shutting down", "err", serveErr)
	}
	if err := stopDev(ctx, c, log); err != nil {
		return err
	}
	return serveErr
}

// devTokenLabel is the label of the token --softhsm makes.
const devTokenLabel = "keybroker-dev"

// devSoftHSM makes the --softhsm token in DIR/softhsm, or reuses the one
// an earlier start made, and points SOFTHSM2_CONF at it for this process
// (SoftHSM reads it when the module is first opened, which is later), and
// returns its backend URI.
func devSoftHSM(ctx context.Context, dir string, log *slog.Logger) (string, error) {
	tok, err := softhsm.Ensure(ctx, filepath.Join(dir, "softhsm"), devTokenLabel, softhsm.Options{})
	if errors.Is(err, softhsm.ErrNotInstalled) {
		return "", fmt.Errorf("--softhsm: %w", err)
	}
	if err != nil {
		return "", err
	}
	if old := os.Getenv(softhsm.ConfEnv); old != "" && old != tok.Conf {
		log.Info("--softhsm: using the token in the data directory, not "+softhsm.ConfEnv+"'s", "was", old, "now", tok.Conf)
	}
	if err := os.Setenv(softhsm.ConfEnv, tok.Conf); err != nil {
		return "", err
	}
	return tok.URI(""), nil
}

// prepareDev waits for the edges, makes sure the demo key exists, and
// waits until the edges have it too.
func prepareDev(ctx context.Context, c *devcluster.Cluster) (*kbv1.KeyMetadata, bool, error) {
	if err := c.WaitSynced(ctx); err != nil {
		return nil, false, err
	}
	demo, created, err := ensureDemoKey(ctx, c)
	if err != nil {
		return nil, false, err
	}
	if err := c.WaitSynced(ctx); err != nil {
		return nil, false, err
	}
	return demo, created, nil
}

// stopDev shuts the cluster down within devShutdownTimeout, whatever
// ended ctx.
func stopDev(ctx context.Context, c *devcluster.Cluster, log *slog.Logger) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), devShutdownTimeout)
	defer cancel()
	if err := c.Shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
		return err
	}
	log.Info("stopped")
	return nil
}

// ensureDemoKey creates the demo key through the central node's KeyAdmin
// API as the admin — authorized and audited like any other call — when
// it does not exist, and returns its metadata and whether it was created.
func ensureDemoKey(ctx context.Context, c *devcluster.Cluster) (*kbv1.KeyMetadata, bool, error) {
	tlsCfg, err := c.ClientFiles(devcluster.AdminName).ClientConfig("")
	if err != nil {
		return nil, false, err
	}
	conn, err := grpc.NewClient(c.Central.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, false, err
	}
	defer conn.Close()
	kb, admin := kbv1.NewKeyBrokerClient(conn), kbv1.NewKeyAdminClient(conn)
	describe := func() (*kbv1.KeyMetadata, error) {
		resp, err := kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: demoKeyID})
		return resp.GetKey(), err
	}
	// Whether the key exists is read from the central node's registry in
	// this process: asking the API first (DescribeKey) made every first
	// start log and audit a NotFound call that was expected.
	if _, err := c.Central.Service().Registry().Get(ctx, demoKeyID); !errors.Is(err, managed.ErrNotFound) {
		if err != nil {
			return nil, false, fmt.Errorf("looking up the demo key: %w", err)
		}
		k, err := describe()
		if err != nil {
			return nil, false, fmt.Errorf("describing the demo key: %w", err)
		}
		return k, false, nil
	}
	k, err := admin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: demoKeyID, Type: kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Description: demoKeyDesc})
	switch {
	case status.Code(err) == codes.AlreadyExists:
		if k, err = describe(); err != nil {
			return nil, false, fmt.Errorf("describing the demo key: %w", err)
		}
		return k, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("creating the demo key: %w", err)
	}
	return k, true, nil
}

// devAppEdge is the edge whose address goes into the env file:
// applications talk to an edge, and the us one is first.
func devAppEdge(c *devcluster.Cluster) string {
	for i, s := range c.EdgeSpecs() {
		if s.Region == "us" {
			return c.Edges[i].Addr()
		}
	}
	return c.Edges[0].Addr()
}

// writeDevEnv writes the env file atomically (atomicfile.Write), mode
// 0600, so that a shell sourcing it never reads half a file.
func writeDevEnv(path string, c *devcluster.Cluster, k devAWSKey) error {
	admin := c.ClientFiles(devcluster.AdminName)
	var b strings.Builder
	b.WriteString("# Written by keybroker dev when its cluster was ready; kept when it stops.\n")
	b.WriteString("# `source` this file to talk to the cluster's us edge as its admin.\n")
	if len(c.Centrals) > 1 {
		b.WriteString("# The central nodes (--addr to talk to one):")
		for i, n := range c.Centrals {
			fmt.Fprintf(&b, " %s %s", devcluster.CentralName(i), n.Addr())
		}
		b.WriteString("\n")
	}
	for _, v := range [][2]string{
		{envAddr, devAppEdge(c)},
		{envCA, admin.CA},
		{envCert, admin.Cert},
		{envKey, admin.Key},
	} {
		fmt.Fprintf(&b, "export %s=%s\n", v[0], shellQuote(v[1]))
	}
	if endpoint := devAWSEndpoint(c); endpoint != "" {
		writeDevAWSEnv(&b, endpoint, admin.CA, k)
	}
	return atomicfile.Write(path, []byte(b.String()), 0o600)
}

// shellSafe are the strings a POSIX shell reads as one word, unquoted.
var shellSafe = regexp.MustCompile(`^[A-Za-z0-9@%_+=:,./-]+$`)

// shellQuote quotes s for a POSIX shell: the whole in single quotes, each
// single quote inside it ending the quoted part, escaped, and starting a
// new one.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellWord is s quoted only when it needs to be, for commands people
// read.
func shellWord(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return shellQuote(s)
}

// printDevReady prints what the cluster is and what to try.
func printDevReady(w io.Writer, c *devcluster.Cluster, envPath string, demo *kbv1.KeyMetadata, created bool) error {
	var b strings.Builder
	b.WriteString("keybroker dev: the cluster is ready.\n\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tREGION\tGRPC\tOPS (/healthz /readyz /metrics)")
	for i, n := range c.Centrals {
		fmt.Fprintf(tw, "  %s\t-\t%s\thttps://%s\n", devcluster.CentralName(i), n.Addr(), n.OpsAddr())
	}
	for i, s := range c.EdgeSpecs() {
		fmt.Fprintf(tw, "  %s\t%s\t%s\thttps://%s\n", s.Name, orDash(s.Region), c.Edges[i].Addr(), c.Edges[i].OpsAddr())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("\n")

	state := "created now"
	if !created {
		state = "exists, created " + timeText(demo.GetCreatedAt())
	}
	if s := demo.GetState(); s != kbv1.KeyState_KEY_STATE_ENABLED {
		state += ", " + stateName(s)
	}
	app := c.ClientFiles(devcluster.AppName)
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, row := range [][2]string{
		{"data", c.Dir() + " (kept across restarts)"},
		{"root of trust", c.Backend()},
		{"store", devStore(c)},
		{"demo key", fmt.Sprintf("%s (%s, %s, primary version %d): %s", demo.GetKeyId(), typeName(demo.GetType()),
			modeName(demo.GetMode()), demo.GetPrimaryVersion(), state)},
		{"env", envPath + " (the us edge, as the admin; AWS tools as client/app)"},
		{"AWS KMS API", orDash(devAWSEndpoint(c)) + " (the us edge; every node serves it on its gRPC port + " + strconv.Itoa(devcluster.AWSPortOffset) + ")"},
		{"app identity", app.Cert + ", " + app.Key + " (a client: uses keys, cannot manage them)"},
	} {
		fmt.Fprintf(tw, "  %s:\t%s\n", row[0], row[1])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	b.WriteString("\nTry, in another shell:\n")
	for _, cmd := range devTryCommands(c, envPath) {
		b.WriteString("  " + cmd + "\n")
	}
	b.WriteString("\nCtrl-C stops the cluster; the data and the env file stay for the next start.\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// devStore says where the registry is.
func devStore(c *devcluster.Cluster) string {
	eps := c.EtcdEndpoints()
	switch m := c.EtcdMember(); {
	case len(eps) == 0:
		return "bbolt, " + filepath.Join(c.Dir(), "central", "registry.db")
	case m != nil:
		return fmt.Sprintf("etcd at %s (dev's own: data %s, log %s), prefix %s", strings.Join(eps, ","), m.DataDir, m.LogFile, devcluster.EtcdPrefix)
	default:
		return fmt.Sprintf("etcd at %s, prefix %s", strings.Join(eps, ","), devcluster.EtcdPrefix)
	}
}

// devTryCommands are the commands printed to try, one shell line each.
// The end-to-end test runs them.
func devTryCommands(c *devcluster.Cluster, envPath string) []string {
	cmds := []string{
		"source " + shellWord(envPath),
		"keybroker encrypt --key " + demoKeyID + " --out hello.enc <<<hello",
		"keybroker decrypt --in hello.enc | cat    # raw to a pipe; a terminal gets base64",
		"keybroker lookup --key " + demoKeyID + " --op encrypt",
		"keybroker key list",
	}
	if len(c.Centrals) > 1 {
		last := len(c.Centrals) - 1
		cmds = append(cmds, "keybroker key describe "+demoKeyID+" --addr "+c.Centrals[last].Addr()+"    # the same registry at "+devcluster.CentralName(last))
	}
	return append(cmds,
		"keybroker nodes",
		"keybroker key rotate "+demoKeyID,
		`curl --cacert "$KEYBROKER_CA" --cert "$KEYBROKER_CERT" --key "$KEYBROKER_KEY" https://`+c.Central.OpsAddr()+"/readyz",
	)
}
