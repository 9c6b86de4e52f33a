package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/internal/hostport"
	"github.com/keybroker/keybroker/kmsplugin"
)

// kmsPluginConfig is kms-plugin's configuration: its YAML file
// (--config), each field overridden by the flag of the same name.
type kmsPluginConfig struct {
	// Listen is the unix socket the apiserver dials (absolute path).
	Listen string `yaml:"listen"`
	// SocketGroup, when set, is the socket's group (name or id), with
	// mode 0660; otherwise the socket is 0600.
	SocketGroup string `yaml:"socket_group"`
	// Key is the keybroker key that seals the apiserver's seeds.
	Key string `yaml:"key"`
	// Cluster names the cluster in every ciphertext's encryption context.
	Cluster string `yaml:"cluster"`
	// Addrs are keybroker nodes, host:port: the nearest edge first.
	Addrs []string `yaml:"addrs"`
	// Region is the plugin's region, for routing.
	Region string `yaml:"region"`
	// Direct uses Addrs alone, in order, without LookupKey.
	Direct bool `yaml:"direct"`
	// CA, Cert and TLSKey are the client's PEM files; SPIFFESocket a
	// Workload API agent instead.
	CA           string `yaml:"ca"`
	Cert         string `yaml:"cert"`
	TLSKey       string `yaml:"tls_key"`
	SPIFFESocket string `yaml:"spiffe_socket"`
	// Grace is how long Status rides out nodes that do not answer.
	Grace time.Duration `yaml:"grace"`
	// Metrics, when set, is a host:port serving /metrics (plain HTTP).
	Metrics string `yaml:"metrics"`
	// Log configures the process log.
	Log config.Log `yaml:"log"`
}

func (c *kmsPluginConfig) validate() error {
	var p []string
	if c.Listen == "" {
		p = append(p, "listen (--listen) is required")
	} else if !strings.HasPrefix(c.Listen, "/") {
		p = append(p, fmt.Sprintf("listen %q: the socket path must be absolute", c.Listen))
	}
	if c.Key == "" {
		p = append(p, "key (--key) is required")
	} else if !envelope.ValidKeyID(c.Key) {
		p = append(p, fmt.Sprintf("key %q is not a keybroker key id", c.Key))
	}
	if len(c.Addrs) == 0 {
		p = append(p, "addrs (--addr or "+envAddr+") is required")
	}
	for _, a := range c.Addrs {
		if err := hostport.Check(a); err != nil {
			p = append(p, fmt.Sprintf("addr %q: %v", a, err))
		}
	}
	if c.SPIFFESocket != "" && (c.CA != "" || c.Cert != "" || c.TLSKey != "") {
		p = append(p, "spiffe_socket and ca/cert/tls_key are both given: take the identity from one")
	}
	if c.SPIFFESocket == "" && (c.CA == "" || c.Cert == "" || c.TLSKey == "") {
		p = append(p, "the client identity needs ca, cert and tls_key (--ca, --cert, --tls-key or "+envCA+", "+envCert+", "+envKey+"), or spiffe_socket")
	}
	if c.Grace < 0 {
		p = append(p, "grace must not be negative")
	}
	if c.Metrics != "" {
		// Port 0 is allowed: the system chooses, and the ready line says.
		if _, port, err := net.SplitHostPort(c.Metrics); err != nil {
			p = append(p, fmt.Sprintf("metrics %q: %v", c.Metrics, err))
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			p = append(p, fmt.Sprintf("metrics %q: port %q is not a number from 0 to 65535", c.Metrics, port))
		}
	}
	if c.Log.Level == "" {
		c.Log.Level = config.DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = config.DefaultLogFormat
	}
	if l := c.Log.Level; l != "debug" && l != "info" && l != "warn" && l != "error" {
		p = append(p, fmt.Sprintf("log.level %q is not one of debug, info, warn, error", l))
	}
	if f := c.Log.Format; f != "json" && f != "text" {
		p = append(p, fmt.Sprintf("log.format %q is not one of json, text", f))
	}
	if len(p) > 0 {
		return errors.New("kms-plugin configuration: " + strings.Join(p, "; "))
	}
	return nil
}

// loadKMSPluginConfig reads path strictly: unknown fields are errors.
func loadKMSPluginConfig(path string) (*kmsPluginConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c kmsPluginConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

func newKMSPluginCmd(e *env) *cobra.Command {
	var configPath string
	var f kmsPluginConfig
	var addrs string
	var logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "kms-plugin --listen SOCKET --key KEY --addr EDGE[,NODE...]",
		Short: "Serve the Kubernetes KMS v2 API on a unix socket, sealing with a keybroker key",
		Long: `Serve the Kubernetes KMS v2 API (k8s.io/kms/apis/v2 KeyManagementService)
on a unix socket for the apiserver of this control-plane node. The apiserver's
seeds are sealed with keybroker's Encrypt under --key, bound to --cluster; the
plugin is a keybroker client (the Go SDK: routing by LookupKey and fail-over
between the nodes in --addr, the nearest edge first), authenticated by mutual
TLS (--ca, --cert, --tls-key) or a SPIFFE agent (--spiffe-socket).

key_id follows the key's primary version: rotate the keybroker key and the
apiserver moves to the new version on its next status check, with no restart
and no second plugin; data sealed before keeps opening. healthz is "ok" unless
the key is disabled, pending deletion or gone, or no node has answered for
longer than --grace. docs/kubernetes.md has an EncryptionConfiguration.

Settings come from --config (YAML: listen, socket_group, key, cluster, addrs,
region, direct, ca, cert, tls_key, spiffe_socket, grace, metrics, log.level,
log.format), each overridden by its flag, then the KEYBROKER_* environment.
A stale socket file is removed; the socket is 0600 (0660 with --socket-group).
SIGINT or SIGTERM stops it after the calls in flight.`,
		Example: `  keybroker kms-plugin --listen /var/run/kmsplugin/keybroker.sock --key k8s-secrets \
    --cluster prod-eu --addr edge-eu-1:7700,central-1:7700 \
    --ca /etc/keybroker/ca.crt --cert /etc/keybroker/kms.crt --tls-key /etc/keybroker/kms.key
  keybroker kms-plugin --config /etc/keybroker/kms-plugin.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := &kmsPluginConfig{}
			if configPath != "" {
				var err error
				if c, err = loadKMSPluginConfig(configPath); err != nil {
					return usageError(err)
				}
			}
			set := func(flag string, apply func()) {
				if cmd.Flags().Changed(flag) {
					apply()
				}
			}
			set("listen", func() { c.Listen = f.Listen })
			set("socket-group", func() { c.SocketGroup = f.SocketGroup })
			set("key", func() { c.Key = f.Key })
			set("cluster", func() { c.Cluster = f.Cluster })
			set("addr", func() { c.Addrs = splitList(addrs) })
			set("region", func() { c.Region = f.Region })
			set("direct", func() { c.Direct = f.Direct })
			set("ca", func() { c.CA = f.CA })
			set("cert", func() { c.Cert = f.Cert })
			set("tls-key", func() { c.TLSKey = f.TLSKey })
			set("spiffe-socket", func() { c.SPIFFESocket = f.SPIFFESocket })
			set("grace", func() { c.Grace = f.Grace })
			set("metrics", func() { c.Metrics = f.Metrics })
			set("log-level", func() { c.Log.Level = logLevel })
			set("log-format", func() { c.Log.Format = logFormat })
			if len(c.Addrs) == 0 {
				c.Addrs = splitList(e.getenv(envAddr))
			}
			if c.SPIFFESocket == "" && c.CA == "" && c.Cert == "" && c.TLSKey == "" {
				c.CA, c.Cert, c.TLSKey = e.getenv(envCA), e.getenv(envCert), e.getenv(envKey)
				if c.CA == "" && c.Cert == "" && c.TLSKey == "" {
					c.SPIFFESocket = e.getenv(envSPIFFESocket)
				}
			}
			if err := c.validate(); err != nil {
				return usageError(err)
			}
			return runKMSPlugin(cmd.Context(), c, c.Log.NewLogger(e.stderr))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&configPath, "config", "", "YAML file of settings (flags override it)")
	fs.StringVar(&f.Listen, "listen", "", "unix socket path the apiserver dials (absolute)")
	fs.StringVar(&f.SocketGroup, "socket-group", "", "group (name or id) of the socket, which is then 0660 instead of 0600")
	fs.StringVar(&f.Key, "key", "", "keybroker key (AES-256-GCM, derive or wrap mode) that seals the apiserver's seeds")
	fs.StringVar(&f.Cluster, "cluster", kmsplugin.DefaultCluster, "cluster name bound into every ciphertext; the same on every control-plane node")
	fs.StringVar(&addrs, "addr", "", "keybroker nodes, host:port, comma-separated, the nearest edge first (env "+envAddr+")")
	fs.StringVar(&f.Region, "region", "", "the plugin's region, so that edges in it come first")
	fs.BoolVar(&f.Direct, "direct", false, "use --addr alone, in order, without asking LookupKey")
	fs.StringVar(&f.CA, "ca", "", "PEM file of the CA certificates that sign keybroker's nodes (env "+envCA+")")
	fs.StringVar(&f.Cert, "cert", "", "PEM file of the plugin's client certificate (env "+envCert+")")
	fs.StringVar(&f.TLSKey, "tls-key", "", "PEM file of the client certificate's private key (env "+envKey+")")
	fs.StringVar(&f.SPIFFESocket, "spiffe-socket", "", "SPIFFE Workload API agent socket, unix:///path, instead of the files (env "+envSPIFFESocket+")")
	fs.DurationVar(&f.Grace, "grace", kmsplugin.DefaultGrace, "how long status stays ok from the last good answer while no keybroker node answers")
	fs.StringVar(&f.Metrics, "metrics", "", "host:port serving Prometheus /metrics over plain HTTP (keep it on localhost)")
	fs.StringVar(&logLevel, "log-level", config.DefaultLogLevel, "debug (a line per call), info, warn or error")
	fs.StringVar(&logFormat, "log-format", config.DefaultLogFormat, "json or text")
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// startupCheck bounds the first DescribeKey: a plugin that cannot reach
// keybroker at start still serves (and reports unhealthy).
const startupCheck = 10 * time.Second

func runKMSPlugin(ctx context.Context, c *kmsPluginConfig, log *slog.Logger) error {
	kc, err := client.New(ctx, client.Config{
		Addrs: c.Addrs, CAFile: c.CA, CertFile: c.Cert, KeyFile: c.TLSKey, SPIFFESocket: c.SPIFFESocket,
		Region: c.Region, Direct: c.Direct, Logger: log,
		// Only this configuration, never stray variables.
		Getenv: func(string) string { return "" },
	})
	if err != nil {
		return usageError(err)
	}
	defer kc.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	svc, err := kmsplugin.New(kc, kmsplugin.Config{Key: c.Key, Cluster: c.Cluster, Grace: c.Grace, Logger: log, Registerer: reg})
	if err != nil {
		return usageError(err)
	}
	cctx, cancel := context.WithTimeout(ctx, startupCheck)
	meta, err := svc.Refresh(cctx)
	cancel()
	switch {
	case err == nil:
		log.Info("kms-plugin: key ready", "key", c.Key, "version", meta.GetPrimaryVersion(),
			"key_id", kmsplugin.KeyID(meta, meta.GetPrimaryVersion()), "state", meta.GetState().String())
	case meta != nil:
		return usageErrorf("kms-plugin: %v", err)
	case status.Code(err) == codes.NotFound || status.Code(err) == codes.PermissionDenied || status.Code(err) == codes.InvalidArgument:
		return fmt.Errorf("kms-plugin: key %s: %w", c.Key, err)
	default:
		log.Warn("kms-plugin: no keybroker node answered at start; serving, unhealthy until one does", "err", err)
	}

	ln, err := kmsplugin.Listen(c.Listen, kmsplugin.SocketOptions{Group: c.SocketGroup})
	if err != nil {
		return err
	}
	opsAddr := ""
	if c.Metrics != "" {
		ml, err := net.Listen("tcp", c.Metrics)
		if err != nil {
			ln.Close()
			return fmt.Errorf("kms-plugin: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = hs.Serve(ml) }()
		defer hs.Close()
		opsAddr = ml.Addr().String()
	}
	// The ready line of every keybroker server: grpc_addr is where the
	// apiserver dials, ops_addr serves /metrics.
	log.Info("kms-plugin ready", "grpc_addr", "unix://"+c.Listen, "ops_addr", opsAddr, "key", c.Key,
		"cluster", c.Cluster, "addrs", c.Addrs)
	err = svc.Serve(ctx, ln)
	log.Info("kms-plugin: stopped")
	return err
}
