package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/managed"
)

// This file holds the parts every keybroker node's configuration shares:
// the central process's (Central) and the edge's (Edge).

// TLS names the PEM files of a node's mutual-TLS identity. Relative paths
// are resolved against the configuration file's directory.
type TLS struct {
	// CA is the bundle of CA certificates that sign peers; only peers
	// whose certificates chain to it are accepted. Required unless
	// spiffe is given (then the agent's bundle is the CA).
	CA string `yaml:"ca"`
	// Cert is this node's certificate chain, leaf first; its URI SAN is
	// spiffe://<trust_domain>/<kind>/<node_id>. Required unless spiffe
	// is given.
	Cert string `yaml:"cert"`
	// Key is the private key of Cert. It is a file, never inline, so it
	// cannot end up in the configuration. Required unless spiffe is
	// given.
	Key string `yaml:"key"`
	// CRL is an optional file of X.509 certificate revocation lists (PEM
	// "X509 CRL" blocks, or one DER list), each signed by a CA of CA (or
	// of the agent's bundle, with spiffe).
	// Peers whose chain holds a listed certificate are refused, and their
	// open connections closed.
	CRL string `yaml:"crl"`
	// Deny is an optional file of denied peers, one a line: a SPIFFE id,
	// or serial:<hex> for a certificate serial number; # starts a
	// comment.
	Deny string `yaml:"deny"`
	// ReloadInterval is how often CA, Cert, Key, CRL and Deny are looked
	// at for a change (SIGHUP re-reads them at once). 0s disables
	// polling. Default 1s, range 100ms..1h.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// SPIFFE names a SPIFFE Workload API agent (SPIRE's, or any server of the
// SpiffeWorkloadAPI service) as the node's identity source, in place of
// tls.ca, tls.cert and tls.key: the node's X.509 SVID, its key and the
// trust domain's CA bundle come from the agent and follow its rotations
// (package identity/workload). tls.crl and tls.deny still apply, the CRL
// verified against the agent's bundle.
type SPIFFE struct {
	// Socket is the agent's unix socket, unix:///absolute/path or an
	// absolute path. Required when spiffe is given; tcp:// is refused
	// (over TCP the agent cannot attest the process).
	Socket string `yaml:"socket"`
	// ID is the SVID to use when the agent gives this process several
	// (spiffe://<trust_domain>/<kind>/<node_id>). Optional: without it the
	// agent's default SVID is used.
	ID string `yaml:"id"`
	// Timeout bounds the wait for the agent's first SVID at start.
	// Default 30s (DefaultSPIFFETimeout), range 1s..10m.
	Timeout time.Duration `yaml:"timeout"`
}

// Workload API wait bounds.
const (
	DefaultSPIFFETimeout = workload.DefaultTimeout
	MinSPIFFETimeout     = time.Second
	MaxSPIFFETimeout     = 10 * time.Minute
)

// Enabled reports whether the configuration names a Workload API agent.
// (A timeout alone, which the defaults set, names none.)
func (s SPIFFE) Enabled() bool { return s.Socket != "" || s.ID != "" }

// Options are the options package identity/workload takes.
func (s SPIFFE) Options(log *slog.Logger) workload.Options {
	return workload.Options{Timeout: s.Timeout, ID: s.ID, Logger: log}
}

func (s SPIFFE) check(p *problems, field string) {
	switch {
	case s.Socket == "":
		p.add(field+".socket", "required")
	case !strings.HasPrefix(s.Socket, "unix:///") && !filepath.IsAbs(s.Socket):
		p.add(field+".socket", "%q is neither unix:///absolute/path nor an absolute path", s.Socket)
	default:
		if _, err := workload.ParseSocket(s.Socket); err != nil {
			p.add(field+".socket", "%s", strings.TrimPrefix(err.Error(), "workload: "))
		}
	}
	if s.ID != "" {
		if _, err := identity.Parse(s.ID); err != nil {
			p.add(field+".id", "%v", err)
		}
	}
	if s.Timeout != 0 {
		checkDuration(p, field+".timeout", s.Timeout, MinSPIFFETimeout, MaxSPIFFETimeout)
	}
}

// checkIdentity checks the node's identity source: exactly one of the
// TLS files (tls.ca, tls.cert, tls.key) and a Workload API agent (spiffe).
// want is the node's own SPIFFE id, which spiffe.id must be when given.
func checkIdentity(p *problems, t TLS, s SPIFFE, want identity.Identity) {
	files := t.CA != "" || t.Cert != "" || t.Key != ""
	if !s.Enabled() {
		if !files {
			p.add("tls", "no identity: give tls.ca, tls.cert and tls.key, or spiffe.socket (a SPIFFE Workload API agent)")
		}
		t.check(p, "tls")
		return
	}
	if files {
		p.add("spiffe", "both spiffe and tls.ca/tls.cert/tls.key are given: a node takes its identity from one; drop tls.ca, tls.cert and tls.key, or spiffe")
	}
	s.check(p, "spiffe")
	if s.ID != "" && want.Name != "" {
		if id, err := identity.Parse(s.ID); err == nil && id != want {
			p.add("spiffe.id", "%s is not this node's id %s", id, want)
		}
	}
	t.checkRevocation(p, "tls")
}

// TLS reload interval bounds.
const (
	DefaultTLSReloadInterval = time.Second
	MinTLSReloadInterval     = 100 * time.Millisecond
	MaxTLSReloadInterval     = time.Hour
)

// Revocation returns the revocation files in the form package identity
// takes.
func (t TLS) Revocation() identity.RevocationFiles {
	return identity.RevocationFiles{CRL: t.CRL, Deny: t.Deny}
}

// FileOptions are the options package identity follows the files with.
func (t TLS) FileOptions(log *slog.Logger) identity.FileOptions {
	d := t.ReloadInterval
	if d == 0 {
		d = -1 // polling disabled
	}
	return identity.FileOptions{ReloadInterval: d, Logger: log}
}

// Files returns the files in the form package identity takes.
func (t TLS) Files() identity.TLSFiles {
	return identity.TLSFiles{CA: t.CA, Cert: t.Cert, Key: t.Key}
}

func (t *TLS) resolve(base string) {
	resolvePath(base, &t.CA)
	resolvePath(base, &t.Cert)
	resolvePath(base, &t.Key)
	resolvePath(base, &t.CRL)
	resolvePath(base, &t.Deny)
}

func (t TLS) check(p *problems, field string) {
	checkPath(p, field+".ca", t.CA)
	checkPath(p, field+".cert", t.Cert)
	checkPath(p, field+".key", t.Key)
	t.checkRevocation(p, field)
}

// checkRevocation checks what applies whatever the identity source: the
// revocation files and their reload interval.
func (t TLS) checkRevocation(p *problems, field string) {
	for _, f := range []struct{ name, v string }{{".crl", t.CRL}, {".deny", t.Deny}} {
		if f.v != "" {
			checkPath(p, field+f.name, f.v)
		}
	}
	if d := t.ReloadInterval; d != 0 {
		checkDuration(p, field+".reload_interval", d, MinTLSReloadInterval, MaxTLSReloadInterval)
	}
}

// stat looks at the TLS files; with spiffe (files false) only the
// revocation files, as the agent's socket may come up after the node.
func (t TLS) stat(p *problems, field string, files bool) {
	if files {
		statFile(p, field+".ca", t.CA)
		statFile(p, field+".cert", t.Cert)
		statFile(p, field+".key", t.Key)
	}
	if t.CRL != "" {
		statFile(p, field+".crl", t.CRL)
	}
	if t.Deny != "" {
		statFile(p, field+".deny", t.Deny)
	}
}

// Log configures the process's structured log (log/slog).
type Log struct {
	// Level is the least severe level written: debug, info, warn or
	// error, spelled exactly so. Default info.
	Level string `yaml:"level"`
	// Format is json (one JSON object a line, for collectors) or text
	// (key=value, for people). Default json.
	Format string `yaml:"format"`
}

// Log defaults.
const (
	DefaultLogLevel  = "info"
	DefaultLogFormat = "json"
)

var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// SlogLevel returns Level as a slog.Level (info if Level is not valid).
func (l Log) SlogLevel() slog.Level { return logLevels[l.Level] }

// NewLogger returns a logger writing to w in the configured format and
// level.
func (l Log) NewLogger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: l.SlogLevel()}
	if l.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func (l Log) check(p *problems, field string) {
	if _, ok := logLevels[l.Level]; !ok {
		p.add(field+".level", "%q is not one of debug, info, warn, error", l.Level)
	}
	if l.Format != "json" && l.Format != "text" {
		p.add(field+".format", "%q is not one of json, text", l.Format)
	}
}

// Audit configures the append-only, hash-chained audit log.
type Audit struct {
	// Path is the audit log file, JSON lines, created if missing and only
	// ever appended to. Default <data_dir>/audit.jsonl.
	Path string `yaml:"path"`
	// FlushInterval is the longest an audit line waits in memory before
	// it is written and synced; a crash loses at most this much of the
	// log. Default 100ms, range 10ms..10s.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// HeadKeyFile holds the key (at least 32 bytes, used as they are)
	// that authenticates the log's head file, so that lines dropped from
	// the end of the log cannot be hidden by rewriting the head without
	// it. Keep it where whoever might edit the log cannot read it.
	// Optional: without it the head is unauthenticated.
	HeadKeyFile string `yaml:"head_key_file"`
}

// Audit defaults and bounds.
const (
	DefaultAuditFlush = 100 * time.Millisecond
	MinAuditFlush     = 10 * time.Millisecond
	MaxAuditFlush     = 10 * time.Second
	DefaultAuditFile  = "audit.jsonl"
)

func (a *Audit) resolve(base, dataDir string) {
	if a.Path == "" && dataDir != "" {
		a.Path = filepath.Join(dataDir, DefaultAuditFile)
	}
	resolvePath(base, &a.Path)
	resolvePath(base, &a.HeadKeyFile)
}

// check checks the fields; an empty path is reported only when data_dir,
// which its default is built from, is given (a missing data_dir is already
// reported).
func (a Audit) check(p *problems, field, dataDir string) {
	if a.Path != "" {
		checkPath(p, field+".path", a.Path)
	}
	checkDuration(p, field+".flush_interval", a.FlushInterval, MinAuditFlush, MaxAuditFlush)
	if a.HeadKeyFile != "" {
		checkPath(p, field+".head_key_file", a.HeadKeyFile)
	}
	if a.Path == "" && dataDir != "" {
		p.add(field+".path", "empty: ResolvePaths sets it to <data_dir>/%s", DefaultAuditFile)
	}
}

// stat checks that the audit log's directory exists or is data_dir (which
// the node creates), and that the log, if it exists, is a regular file.
func (a Audit) stat(p *problems, field, dataDir string) {
	if dir := filepath.Dir(a.Path); dir != dataDir {
		statDir(p, field+".path", dir)
	}
	if st, err := os.Stat(a.Path); err == nil && !st.Mode().IsRegular() {
		p.add(field+".path", "%s is not a regular file", a.Path)
	}
	if a.HeadKeyFile != "" {
		statFile(p, field+".head_key_file", a.HeadKeyFile)
	}
}

// Ops says who may use the operations endpoints (/healthz, /readyz,
// /metrics on ops_listen). Anyone else gets 403.
type Ops struct {
	// Allow lists the principals admitted: a kind (admin, client, edge or
	// central), admitting every identity of that kind in the trust domain,
	// or a full SPIFFE id of the trust domain
	// (spiffe://<trust_domain>/<kind>/<name>). Default [admin]; at least
	// one entry, none repeated.
	Allow []string `yaml:"allow"`
}

// DefaultOpsAllow is who may use the operations endpoints by default.
var DefaultOpsAllow = []string{string(identity.Admin)}

// Principals returns the kinds and identities Allow admits. Call it on a
// validated configuration: entries that do not parse are skipped.
func (o Ops) Principals() (kinds []identity.Kind, ids []identity.Identity) {
	for _, a := range o.Allow {
		if k, ok := opsKind(a); ok {
			kinds = append(kinds, k)
		} else if id, err := identity.Parse(a); err == nil {
			ids = append(ids, id)
		}
	}
	return kinds, ids
}

func opsKind(s string) (identity.Kind, bool) {
	switch k := identity.Kind(s); k {
	case identity.Admin, identity.Client, identity.Edge, identity.Central:
		return k, true
	}
	return "", false
}

func (o Ops) check(p *problems, field, trustDomain string) {
	if len(o.Allow) == 0 {
		p.add(field+".allow", "at least one principal is required (the default is [admin])")
	}
	seen := map[string]int{}
	for i, a := range o.Allow {
		f := fmt.Sprintf("%s.allow[%d]", field, i)
		if j, dup := seen[a]; dup {
			p.add(f, "%q is already %s.allow[%d]", a, field, j)
			continue
		}
		seen[a] = i
		if _, ok := opsKind(a); ok {
			continue
		}
		id, err := identity.Parse(a)
		switch {
		case err != nil:
			p.add(f, "%q is neither a kind (admin, client, edge, central) nor a SPIFFE id: %v", a, err)
		case id.TrustDomain != trustDomain:
			p.add(f, "%q is not in trust domain %q", a, trustDomain)
		}
	}
}

// MaterialCache bounds the in-memory cache of plaintext managed-key
// material. Entries are zeroed when they leave it.
type MaterialCache struct {
	// Size is the most key versions held at once; the least recently used
	// leaves first. Default 10000, range 1..10000000.
	Size int `yaml:"size"`
	// TTL is how long material stays after it was fetched or derived,
	// however often it is used; a shorter TTL means more calls to the
	// backends, a longer one more time a secret sits in memory. Default
	// 5m, range 1s..24h.
	TTL time.Duration `yaml:"ttl"`
}

// Material-cache defaults and bounds.
const (
	DefaultMaterialCacheSize = 10000
	MaxMaterialCacheSize     = 10_000_000
	DefaultMaterialCacheTTL  = 5 * time.Minute
	MinMaterialCacheTTL      = time.Second
	MaxMaterialCacheTTL      = 24 * time.Hour
)

func (m MaterialCache) check(p *problems, field string) {
	checkInt(p, field+".size", int64(m.Size), 1, MaxMaterialCacheSize, "")
	checkDuration(p, field+".ttl", m.TTL, MinMaterialCacheTTL, MaxMaterialCacheTTL)
}

// DataKeyReuse bounds how long one data key seals messages (see
// envelope.ReusePolicy); whichever bound is reached first retires the key.
type DataKeyReuse struct {
	// Period is the longest one data key is used. Default 5m, range
	// 60s..24h.
	Period time.Duration `yaml:"period"`
	// MaxMessages is the most messages sealed under one data key, far
	// below AES-GCM's 2^32 limit for random nonces. Default 268435456
	// (2^28), range 1..4294967296 (2^32).
	MaxMessages uint64 `yaml:"max_messages"`
	// MaxBytes is the most plaintext bytes sealed under one data key.
	// Default 68719476736 (64 GiB), at least 1.
	MaxBytes uint64 `yaml:"max_bytes"`
	// MaxDataKeysPerVersion is the most data keys this node wraps under
	// one key version — for a derived key, one version and encryption
	// context — (AES-GCM with random nonces under one key-encryption
	// key); past it, new data keys are refused until the key is rotated. Every node counts for itself: keep nodes × bound ≤
	// 2^32. Default 268435456 (2^28, so 16 nodes), range 1..4294967296.
	MaxDataKeysPerVersion uint64 `yaml:"max_data_keys_per_version"`
}

// ReusePolicy returns the bounds in the form package envelope takes.
func (r DataKeyReuse) ReusePolicy() envelope.ReusePolicy {
	return envelope.ReusePolicy{Period: r.Period, MaxMessages: r.MaxMessages, MaxBytes: r.MaxBytes}
}

func defaultDataKeyReuse() DataKeyReuse {
	return DataKeyReuse{
		Period:      envelope.DefaultReusePeriod,
		MaxMessages: envelope.DefaultMaxMessages,
		MaxBytes:    envelope.DefaultMaxBytes,

		MaxDataKeysPerVersion: managed.DefaultMaxDataKeysPerVersion,
	}
}

func (r DataKeyReuse) check(p *problems, field string) {
	checkDuration(p, field+".period", r.Period, envelope.MinReusePeriod, envelope.MaxReusePeriod)
	if r.MaxMessages < 1 || r.MaxMessages > envelope.MaxMaxMessages {
		p.add(field+".max_messages", "%d is out of range 1..%d", r.MaxMessages, uint64(envelope.MaxMaxMessages))
	}
	if r.MaxBytes < 1 {
		p.add(field+".max_bytes", "must be at least 1")
	}
	if r.MaxDataKeysPerVersion < 1 || r.MaxDataKeysPerVersion > managed.MaxMaxDataKeysPerVersion {
		p.add(field+".max_data_keys_per_version", "%d is out of range 1..%d", r.MaxDataKeysPerVersion, uint64(managed.MaxMaxDataKeysPerVersion))
	}
}

// Limits bounds what one request may cost.
type Limits struct {
	// MaxRequestBytes is the largest request message accepted, the gRPC
	// server's maximum receive size; larger requests fail with
	// ResourceExhausted before they are decoded. Default 5242880 (5 MiB),
	// range 65536 (64 KiB)..67108864 (64 MiB).
	MaxRequestBytes int `yaml:"max_request_bytes"`
}

// Limits defaults and bounds.
const (
	DefaultMaxRequestBytes = 5 << 20
	MinMaxRequestBytes     = 64 << 10
	MaxMaxRequestBytes     = 64 << 20
)

func (l Limits) check(p *problems, field string) {
	checkInt(p, field+".max_request_bytes", int64(l.MaxRequestBytes), MinMaxRequestBytes, MaxMaxRequestBytes, "bytes")
}

// ---- field checks ----

// nameRe is what node ids and backend names look like: they appear in
// SPIFFE ids, log lines, audit records and metric labels.
var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func checkName(p *problems, field, v string) {
	switch {
	case v == "":
		p.add(field, "required")
	case !nameRe.MatchString(v):
		p.add(field, "%q is not 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit", v)
	}
}

// checkTrustDomain accepts exactly the trust domains package identity
// accepts in a SPIFFE id, so a configuration never names one its own
// certificates could not carry.
func checkTrustDomain(p *problems, field, v string) {
	if v == "" {
		p.add(field, "required")
		return
	}
	id, err := identity.Parse("spiffe://" + v + "/central/x")
	if err != nil || id.TrustDomain != v {
		p.add(field, "%q is not a trust domain: lowercase letters, digits, '.' and '-', at most 255, starting and ending with a letter or digit", v)
	}
}

var hostRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// listenAddr is a parsed host:port to listen on.
type listenAddr struct {
	host string // "" for every interface
	port uint16
}

// wildcard reports whether the address listens on every interface.
func (a listenAddr) wildcard() bool {
	if a.host == "" {
		return true
	}
	ip, err := netip.ParseAddr(a.host)
	return err == nil && ip.IsUnspecified()
}

// overlaps reports whether a and b could not both be listened on. Port 0
// asks the system for a free port, a different one each time.
func (a listenAddr) overlaps(b listenAddr) bool {
	return a.port != 0 && a.port == b.port && (a.host == b.host || a.wildcard() || b.wildcard())
}

// checkListeners checks a node's gRPC and ops listen addresses and the
// address it advertises for the first: the two listeners must not
// overlap, and a listener no peer can dial needs an advertise address.
func checkListeners(p *problems, listen, advertise, ops string) {
	l, lok := checkListen(p, "listen", listen)
	o, ook := checkListen(p, "ops_listen", ops)
	if lok && ook && l.overlaps(o) {
		p.add("ops_listen", "%q overlaps listen %q: the gRPC and ops listeners need different ports", ops, listen)
	}
	if advertise != "" {
		if a, ok := checkListen(p, "advertise_address", advertise); ok && (a.wildcard() || a.port == 0) {
			p.add("advertise_address", "%q: give a host and port peers can dial", advertise)
		}
	} else if lok && l.wildcard() {
		p.add("advertise_address", "required when listen %q has no dialable host: give the host:port peers should dial", listen)
	}
}

// checkDial checks a host:port to dial: as checkListen, but the host must
// be given and not a wildcard, and the port must not be 0.
func checkDial(p *problems, field, v string) {
	a, ok := checkListen(p, field, v)
	switch {
	case !ok:
	case a.wildcard():
		p.add(field, "%q has no host to dial: give a DNS name or IP address", v)
	case a.port == 0:
		p.add(field, "%q: port 0 cannot be dialled; give a port 1..65535", v)
	}
}

// checkListen parses a host:port to listen on: the host is empty (every
// interface), an IP address or a DNS name; the port a number 0..65535
// written plainly (service names are not looked up). Port 0 takes a free
// port, for tests and keybroker dev; the node logs the one it got.
func checkListen(p *problems, field, v string) (listenAddr, bool) {
	if v == "" {
		p.add(field, "required (host:port)")
		return listenAddr{}, false
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		p.add(field, "%q is not host:port", v)
		return listenAddr{}, false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (port[0] == '0' && port != "0") {
		p.add(field, "%q: port %q is not a number 0..65535", v, port)
		return listenAddr{}, false
	}
	if !validHost(host) {
		p.add(field, "%q: host %q is not an IP address or DNS name", v, host)
		return listenAddr{}, false
	}
	return listenAddr{host: host, port: uint16(n)}, true
}

// validHost accepts "" (every interface), an IP address (IPv6 with a zone
// too) or a DNS name; a dotted number that is not an IP address is refused
// rather than looked up as a name.
func validHost(h string) bool {
	if h == "" {
		return true
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if strings.Trim(h, "0123456789.") == "" {
		return false
	}
	return len(h) <= 253 && hostRe.MatchString(h)
}

// regionRe is what a region looks like; it is broker's rule for the
// region of a registered node (broker/nodes.go), so that the central tier
// never refuses a region the configuration accepted.
var regionRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

func checkRegion(p *problems, field, v string) {
	if v != "" && !regionRe.MatchString(v) {
		p.add(field, "%q is not 1-63 lowercase letters, digits or '-' starting with a letter or digit", v)
	}
}

// Label bounds, those of package managed's ValidateLabels, which the
// central tier applies to the labels an edge registers with.
const (
	MaxLabels          = 64
	MaxLabelValueBytes = 256
)

var labelKeyRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)

// checkLabels checks a node's labels, in key order so that problems come
// out in the same order each time.
func checkLabels(p *problems, field string, labels map[string]string) {
	if len(labels) > MaxLabels {
		p.add(field, "%d labels; at most %d", len(labels), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		f := mapField(field, k)
		if !labelKeyRe.MatchString(k) {
			p.add(f, "the key is not 1-63 letters, digits, '.', '_', '/' or '-' starting with a letter or digit")
		}
		if v := labels[k]; len(v) > MaxLabelValueBytes {
			p.add(f, "value is %d bytes; at most %d", len(v), MaxLabelValueBytes)
		}
	}
}

// plainKeyRe is a map key that can be written after a dot in a field path.
var plainKeyRe = regexp.MustCompile(`^[A-Za-z0-9._/-]+$`)

// mapField is the field path of a map entry: labels.zone, or, for a key
// that is not plain, labels["a key"] (quoted, so that a control character
// in a key cannot garble a message).
func mapField(path, key string) string {
	if plainKeyRe.MatchString(key) {
		return joinField(path, key)
	}
	return path + "[" + strconv.Quote(key) + "]"
}

// checkDuration checks lo <= d <= hi.
func checkDuration(p *problems, field string, d, lo, hi time.Duration) {
	switch {
	case d < lo:
		p.add(field, "%s is below the minimum %s", formatDuration(d), formatDuration(lo))
	case d > hi:
		p.add(field, "%s is above the maximum %s", formatDuration(d), formatDuration(hi))
	}
}

// checkInt checks lo <= v <= hi; unit "bytes" adds binary sizes to the
// message.
func checkInt(p *problems, field string, v, lo, hi int64, unit string) {
	show := func(n int64) string {
		if unit == "bytes" && n >= 1024 {
			return fmt.Sprintf("%d (%s)", n, formatBytes(n))
		}
		return strconv.FormatInt(n, 10)
	}
	switch {
	case v < lo:
		p.add(field, "%s is below the minimum %s", show(v), show(lo))
	case v > hi:
		p.add(field, "%s is above the maximum %s", show(v), show(hi))
	}
}

// formatDuration writes d as people write it: 5m, not 5m0s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// formatBytes writes n in the largest binary unit that divides it, with a
// decimal fraction otherwise: 64 KiB, 5 MiB, 1.5 GiB.
func formatBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strconv.FormatFloat(f, 'f', -1, 64) + " " + units[i]
}

// checkPath checks that a file path is given and holds no control
// characters (which no real path has and which would garble log lines).
func checkPath(p *problems, field, v string) {
	if v == "" {
		p.add(field, "required")
		return
	}
	if strings.ContainsFunc(v, isControl) {
		p.add(field, "path has a control character")
	}
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// resolvePath makes a relative path absolute against base (when base is
// given) and cleans it; empty paths stay empty so that "required" is
// still reported.
func resolvePath(base string, p *string) {
	if *p == "" {
		return
	}
	if !filepath.IsAbs(*p) && base != "" {
		*p = filepath.Join(base, *p)
	}
	*p = filepath.Clean(*p)
}

// statDataDir checks that data_dir is a directory if it exists; the node
// creates it otherwise.
func statDataDir(p *problems, field, dir string) {
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		p.add(field, "%s is not a directory", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.at(0, field, err)
	}
}

// readConfig reads the file at path for a loader: its bytes, and the
// directory relative paths in it are resolved against. Errors name the
// file.
func readConfig(path string) ([]byte, string, error) {
	data, err := readFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, "", &Error{File: path, Err: err}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, "", &Error{File: path, Err: err}
	}
	return data, filepath.Dir(abs), nil
}
