package main

// keybroker ca init, and keybroker cert issue|renew|show: a deployment's
// certificates without hand-written openssl. The CA lives in a directory:
//
//	ca.crt   the CA certificate (0644): every node's and client's tls.ca
//	ca.yaml  the trust domain and where the CA key is (0644)
//	ca.key   the CA key (0600), when it is a file and not in a token
//
// These commands open the CA's key directly (a file, or a key in a root of
// trust through the same backends the central tier uses); they never talk
// to a node.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/atomicfile"
)

// The files of a CA directory.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	caYAMLFile = "ca.yaml"
)

// caYAML is ca.yaml: the trust domain and where the CA key lives. Exactly
// one of KeyFile and KeyURI is set.
type caYAML struct {
	// TrustDomain is the trust domain the CA issues for.
	TrustDomain string `yaml:"trust_domain"`
	// Cert is the CA certificate, relative to the directory.
	Cert string `yaml:"cert"`
	// KeyFile is the CA's PEM key file, relative to the directory.
	KeyFile string `yaml:"key_file,omitempty"`
	// KeyURI is a key URI (pkcs11:, softkms:, awskms:, gcpkms:) naming an
	// ECDSA P-256 key in a root of trust, with what it takes to open the
	// backend (a pkcs11 module-path and pin-source).
	KeyURI string `yaml:"key_uri,omitempty"`
	// KeyName, when set, is the key's name as the backend's Sign takes it,
	// where CreateKey named it otherwise than KeyURI does.
	KeyName string `yaml:"key_name,omitempty"`
}

func parseCAYAML(path string, data []byte) (*caYAML, error) {
	var y caYAML
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&y); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var errs []error
	if y.TrustDomain == "" {
		errs = append(errs, errors.New("trust_domain: required"))
	}
	if y.Cert == "" {
		errs = append(errs, errors.New("cert: required"))
	}
	if (y.KeyFile == "") == (y.KeyURI == "") {
		errs = append(errs, errors.New("give exactly one of key_file and key_uri"))
	}
	if y.KeyName != "" && y.KeyURI == "" {
		errs = append(errs, errors.New("key_name: only with key_uri"))
	}
	if y.KeyURI != "" {
		if u, err := backends.ParseKeyURI(y.KeyURI); err != nil {
			errs = append(errs, fmt.Errorf("key_uri: %w", err))
		} else if u.Key() == "" && y.KeyName == "" {
			errs = append(errs, errors.New("key_uri: names no key"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &y, nil
}

// openedCA is a CA opened from its directory, with the backend its key
// lives in (if any) to close.
type openedCA struct {
	*identity.CA
	dir    string
	closer io.Closer
}

func (o *openedCA) Close() error {
	if o.closer != nil {
		return o.closer.Close()
	}
	return nil
}

// openCADir opens the CA in dir: ca.yaml when there is one, else ca.crt and
// ca.key (the layout `keybroker dev` writes).
func openCADir(ctx context.Context, dir string) (*openedCA, error) {
	if dir == "" {
		return nil, usageErrorf("--ca-dir is required: the directory keybroker ca init wrote")
	}
	path := filepath.Join(dir, caYAMLFile)
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		ca, err := identity.LoadCA(filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile))
		if err != nil {
			return nil, usageErrorf("%s holds no CA (no %s, and %s/%s: %v): create one with keybroker ca init", dir, caYAMLFile, caCertFile, caKeyFile, err)
		}
		return &openedCA{CA: ca, dir: dir}, nil
	case err != nil:
		return nil, usageError(err)
	}
	y, err := parseCAYAML(path, data)
	if err != nil {
		return nil, usageError(err)
	}
	certFile := inDir(dir, y.Cert)
	var ca *identity.CA
	var closer io.Closer
	if y.KeyFile != "" {
		ca, err = identity.LoadCA(certFile, inDir(dir, y.KeyFile))
	} else {
		var signer crypto.Signer
		signer, closer, err = backendSigner(ctx, y.KeyURI, y.KeyName)
		if err == nil {
			ca, err = identity.LoadSignerCA(certFile, signer)
		}
	}
	if err != nil {
		if closer != nil {
			closer.Close()
		}
		return nil, err
	}
	if ca.TrustDomain != y.TrustDomain {
		if closer != nil {
			closer.Close()
		}
		return nil, fmt.Errorf("%s: trust_domain %q, but %s is the CA of %q", path, y.TrustDomain, certFile, ca.TrustDomain)
	}
	return &openedCA{CA: ca, dir: dir, closer: closer}, nil
}

func inDir(dir, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// backendSigner opens the backend of a key URI and returns a signer over
// the key (name, when given, else the URI's key) and the backend to close.
func backendSigner(ctx context.Context, uri, name string) (crypto.Signer, io.Closer, error) {
	u, err := backends.ParseKeyURI(uri)
	if err != nil {
		return nil, nil, usageError(err)
	}
	if name == "" {
		name = u.Key()
	}
	b, err := central.Backends().Open(ctx, uri, backends.Options{})
	if err != nil {
		return nil, nil, err
	}
	s, ok := b.(backends.Signer)
	if !ok {
		b.Close()
		return nil, nil, fmt.Errorf("the %s backend cannot sign: keep the CA key in a pkcs11, softkms, awskms or gcpkms backend", u.Scheme())
	}
	signer, err := identity.NewBackendSigner(ctx, s, name)
	if err != nil {
		b.Close()
		return nil, nil, err
	}
	return signer, b, nil
}

// validityValue is a duration flag that also takes whole days, "30d".
type validityValue struct{ d time.Duration }

func (v *validityValue) String() string {
	if v.d == 0 {
		return ""
	}
	if v.d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(v.d/(24*time.Hour)), 10) + "d"
	}
	return v.d.String()
}

func (v *validityValue) Set(s string) error {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.ParseUint(n, 10, 16)
		if err != nil || days == 0 {
			return fmt.Errorf("%q is not a number of days (1d..65535d)", s)
		}
		v.d = time.Duration(days) * 24 * time.Hour
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return fmt.Errorf("%q is not a positive duration: write 30d, 12h or 90m", s)
	}
	v.d = d
	return nil
}

func (v *validityValue) Type() string { return "duration" }

const caLong = `Create the certificate authority of a deployment: a self-signed CA
certificate for one SPIFFE trust domain, whose key signs every node and
client certificate (with 'keybroker cert issue').
The directory named by --dir gets:

  ca.crt   the CA certificate (0644): give it to every node and client (tls.ca)
  ca.yaml  the trust domain and where the CA key is
  ca.key   the CA key (0600), unless --key puts it in a root of trust

--key keeps the CA key in a root of trust instead of a file: a key URI as
'keybroker root create' takes it, such as a PKCS#11 token's
  pkcs11:token=LABEL;object=NAME?module-path=/ABS/module.so&pin-source=/ABS/pin-file
The key is created there (ECDSA P-256, sensitive, never extractable), the
CA certificate is signed by it, and ca.yaml records the URI, so that
'keybroker cert issue' and 'cert renew' sign through the token. The PIN is
read from the pin-source file, never from the command line.

A CA is never replaced: every certificate it issued would stop verifying.
ca init refuses a directory that already holds one.

The CA certificate is valid for --validity (default 3650d: ten years),
signs leaf certificates only, and vouches only for SPIFFE ids of its trust
domain (a URI name constraint).`

func newCACmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Create a deployment's certificate authority (in a file or a PKCS#11 token)",
		Example: `  keybroker ca init --trust-domain kb.example --dir /etc/keybroker/ca
  keybroker ca init --trust-domain kb.example --dir ca \
      --key "pkcs11:token=kb;object=keybroker-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin"`,
		Args: subcommands,
		RunE: helpRun,
	}
	var (
		td, dir, key string
		validity     = validityValue{identity.CAValidity}
	)
	initCmd := &cobra.Command{
		Use:   "init --trust-domain TD --dir DIR [--key KEY-URI] [--validity 3650d]",
		Short: "Create a CA: ca.crt, ca.yaml, and its key in ca.key or a root of trust",
		Long:  caLong,
		Example: `  keybroker ca init --trust-domain kb.example --dir /etc/keybroker/ca
  keybroker ca init --trust-domain kb.example --dir ca \
      --key "pkcs11:token=kb;object=keybroker-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin"`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return caInit(cmd.Context(), e, td, dir, key, validity.d)
		},
	}
	fs := initCmd.Flags()
	fs.StringVar(&td, "trust-domain", "", "the SPIFFE trust domain, such as kb.example (required)")
	fs.StringVar(&dir, "dir", "", "directory to create the CA in; created if missing (required)")
	fs.StringVar(&key, "key", "", "key URI of an ECDSA P-256 key to create in a root of trust for the CA (default: a key file, ca.key)")
	fs.Var(&validity, "validity", "how long the CA certificate is valid: 3650d, 8760h")
	_ = initCmd.MarkFlagRequired("trust-domain")
	_ = initCmd.MarkFlagRequired("dir")
	cmd.AddCommand(initCmd)
	return cmd
}

func caInit(ctx context.Context, e *env, td, dir, keyURI string, validity time.Duration) error {
	for _, f := range []string{caCertFile, caYAMLFile, caKeyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return invalidInputf("%s already holds a CA (%s): ca init never replaces a CA, since every certificate it issued would stop verifying. "+
				"To start over, remove %s, %s and %s there (and the CA key in its token, if it has one)",
				dir, f, caCertFile, caYAMLFile, caKeyFile)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	y := caYAML{TrustDomain: td, Cert: caCertFile}
	var ca *identity.CA
	if keyURI == "" {
		var err error
		if ca, err = identity.NewCA(td, validity); err != nil {
			return usageError(err)
		}
		y.KeyFile = caKeyFile
		if err := ca.WriteCA(filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)); err != nil {
			return err
		}
	} else {
		u, err := backends.ParseKeyURI(keyURI)
		if err != nil {
			return usageErrorf("--key: %v", err)
		}
		if u.Key() == "" {
			return usageErrorf("--key %s names no key: add the key's name (pkcs11: ;object=NAME)", keyURI)
		}
		// Check the trust domain before a key is made for nothing.
		if _, err := identity.Parse("spiffe://" + td + "/client/x"); err != nil {
			return usageError(err)
		}
		b, err := central.Backends().Open(ctx, keyURI, backends.Options{})
		if err != nil {
			return err
		}
		defer b.Close()
		kc, ok := b.(backends.KeyCreator)
		s, ok2 := b.(backends.Signer)
		if !ok || !ok2 {
			return fmt.Errorf("the %s backend cannot create and sign with keys: it cannot hold a CA key", u.Scheme())
		}
		info, err := kc.CreateKey(ctx, u.Key(), backends.ECDSAP256)
		if err != nil {
			return fmt.Errorf("creating the CA key: %w", err)
		}
		signer, err := identity.NewBackendSigner(ctx, s, info.Key)
		if err != nil {
			return err
		}
		if ca, err = identity.NewSignerCA(td, signer, validity); err != nil {
			return err
		}
		y.KeyURI = keyURI
		if info.Key != u.Key() {
			y.KeyName = info.Key
		}
		if err := ca.WriteCert(filepath.Join(dir, caCertFile)); err != nil {
			return err
		}
	}
	out, err := yaml.Marshal(&y)
	if err != nil {
		return err
	}
	out = append([]byte("# A keybroker CA, written by keybroker ca init; keybroker cert issue and renew read it.\n"), out...)
	if err := atomicfile.Write(filepath.Join(dir, caYAMLFile), out, 0o644); err != nil {
		return err
	}
	where := filepath.Join(dir, caKeyFile) + " (0600)"
	if keyURI != "" {
		where = "the root of trust: " + keyURI
	}
	fmt.Fprintf(e.stdout, "created the CA of trust domain %s in %s\n", td, dir)
	fmt.Fprintf(e.stdout, "  certificate  %s (give it to every node and client as tls.ca)\n", filepath.Join(dir, caCertFile))
	fmt.Fprintf(e.stdout, "  key          %s\n", where)
	fmt.Fprintf(e.stdout, "  expires      %s\n", ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

const certLong = `Issue, renew and check the certificates of a deployment's nodes and clients.

A keybroker certificate names its holder by exactly one URI SAN, its SPIFFE
id spiffe://TRUST-DOMAIN/KIND/NAME, and carries what its kind needs and no
more:

  kind     extended key usage       DNS / IP SANs     default lifetime
  client   clientAuth               none (refused)    7d
  admin    clientAuth               none (refused)    7d
  edge     serverAuth, clientAuth   its hosts         30d
  central  serverAuth, clientAuth   its hosts         30d

An edge both serves its clients and dials the central tier, so it needs
both usages. KeyUsage is digitalSignature, the key ECDSA P-256, the serial
random. docs/deploy.md walks through a deployment.`

func newCertCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Issue, renew and check node and client certificates",
		Long:  certLong,
		Example: `  keybroker cert issue --ca-dir ca --kind edge --name edge-eu --dns edge-eu.kb.example --out certs
  keybroker cert renew --ca-dir ca --cert certs/edge-eu.crt
  keybroker cert show certs/edge-eu.crt --ca ca/ca.crt`,
		Args: subcommands,
		RunE: helpRun,
	}
	cmd.AddCommand(newCertIssueCmd(e), newCertRenewCmd(e), newCertShowCmd(e))
	return cmd
}

func newCertIssueCmd(e *env) *cobra.Command {
	var (
		caDir, name, td, out string
		dns, ips             []string
		validity             validityValue
		kind                 = newEnum("", string(identity.Client), string(identity.Admin), string(identity.Edge), string(identity.Central))
	)
	cmd := &cobra.Command{
		Use:   "issue --ca-dir DIR --kind KIND --name NAME [--dns H]... [--ip A]... [--validity D] --out DIR",
		Short: "Issue a certificate and key for a node or client: NAME.crt and NAME.key",
		Long: `Issue a certificate for spiffe://TRUST-DOMAIN/KIND/NAME with a new ECDSA
P-256 key, signed by the CA in --ca-dir (its key file, or its key in a root
of trust), and write --out/NAME.crt (0644) and --out/NAME.key (0600). The
certificate file holds the leaf alone: every peer has the CA certificate.

Edges and central nodes get --dns and --ip as SANs, the names clients dial;
clients and admins get none (they never serve) and giving one is an error.
--validity defaults to 30d for nodes and 7d for clients and admins, and is
cut to the CA's own expiry. Existing files are never overwritten: replace a
certificate with keybroker cert renew.`,
		Example: `  keybroker cert issue --ca-dir ca --kind central --name central-1 --dns central.kb.example --ip 10.0.0.2 --out certs
  keybroker cert issue --ca-dir ca --kind edge --name edge-eu --dns edge-eu.kb.example --out certs
  keybroker cert issue --ca-dir ca --kind admin --name ops --out certs
  keybroker cert issue --ca-dir ca --kind client --name billing --validity 24h --out certs`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k := identity.Kind(kind.value)
			var hosts []string
			for _, h := range dns {
				if net.ParseIP(h) != nil {
					return usageErrorf("--dns %s is an IP address: give it with --ip", h)
				}
				hosts = append(hosts, h)
			}
			for _, a := range ips {
				if net.ParseIP(a) == nil {
					return usageErrorf("--ip %q is not an IP address", a)
				}
				hosts = append(hosts, a)
			}
			if len(hosts) > 0 && !k.Serves() {
				return usageErrorf("%s %s certificate carries no --dns or --ip: it only dials, it never serves (only edge and central certificates name hosts)", article(string(k)), k)
			}
			if !identity.ValidName(name) {
				return usageErrorf("--name %q: 1-128 of [A-Za-z0-9._-], starting with a letter or digit", name)
			}
			ca, err := openCADir(cmd.Context(), caDir)
			if err != nil {
				return err
			}
			defer ca.Close()
			if td != "" && td != ca.TrustDomain {
				return usageErrorf("--trust-domain %s: the CA in %s issues for %s", td, caDir, ca.TrustDomain)
			}
			id := identity.Identity{TrustDomain: ca.TrustDomain, Kind: k, Name: name}
			certFile, keyFile := filepath.Join(out, name+".crt"), filepath.Join(out, name+".key")
			for _, f := range []string{certFile, keyFile} {
				if _, err := os.Lstat(f); err == nil {
					return invalidInputf("%s exists: replace a certificate with keybroker cert renew --ca-dir %s --cert %s, or remove it first", f, caDir, certFile)
				}
			}
			certPEM, keyPEM, err := ca.Issue(id, hosts, validity.d)
			if err != nil {
				return usageError(err)
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			if err := writePair(certFile, keyFile, certPEM, keyPEM); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "wrote %s (certificate, 0644) and %s (private key, 0600)\n", certFile, keyFile)
			return printIssued(e.stdout, ca.CA, certPEM, validity.d, identity.DefaultValidity(k))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&caDir, "ca-dir", "", "the CA's directory, as keybroker ca init wrote it (required)")
	fs.Var(kind, "kind", "what the certificate is for (required)")
	fs.StringVar(&name, "name", "", "the node's node_id, or the client's or admin's name (required)")
	fs.StringVar(&td, "trust-domain", "", "the trust domain, checked against the CA's (default: the CA's)")
	fs.StringArrayVar(&dns, "dns", nil, "DNS name clients dial (edge and central only); repeat for more")
	fs.StringArrayVar(&ips, "ip", nil, "IP address clients dial (edge and central only); repeat for more")
	fs.Var(&validity, "validity", "how long the certificate is valid: 30d, 12h (default 30d for nodes, 7d for clients and admins)")
	fs.StringVar(&out, "out", "", "directory to write NAME.crt and NAME.key to (required)")
	for _, f := range []string{"ca-dir", "kind", "name", "out"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

// writePair writes a key (0600) and then its certificate (0644), each
// replaced whole: a process reloading them meanwhile sees a new key with
// the old certificate, a pair it refuses, and keeps what it has.
func writePair(certFile, keyFile string, certPEM, keyPEM []byte) error {
	if keyPEM != nil {
		if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
			return err
		}
	}
	return atomicfile.Write(certFile, certPEM, 0o644)
}

// printIssued says what a certificate is: id, usages, hosts, expiry.
func printIssued(w io.Writer, ca *identity.CA, certPEM []byte, asked, def time.Duration) error {
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return err
	}
	id, _ := identity.FromCertificate(c)
	fmt.Fprintf(w, "  id       %s\n", id)
	fmt.Fprintf(w, "  usages   %s\n", usageNames(c))
	if h := hostNames(c); h != "" {
		fmt.Fprintf(w, "  hosts    %s\n", h)
	}
	fmt.Fprintf(w, "  expires  %s (%s)\n", c.NotAfter.UTC().Format(time.RFC3339), lifetime(c.NotAfter.Sub(c.NotBefore)-time.Minute))
	if want := orDefault(asked, def); c.NotAfter.Equal(ca.Cert.NotAfter) && c.NotAfter.Sub(c.NotBefore) < want {
		fmt.Fprintf(w, "  note     cut to the CA's own expiry; renew the CA before then\n")
	}
	fmt.Fprintf(w, "  serial   %x\n", c.SerialNumber)
	fmt.Fprintf(w, "  ca       %s\n", caName(ca.Cert))
	return nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func caName(c *x509.Certificate) string { return c.Subject.String() }

// lifetime spells a duration for people: 30d, 6d 23h, 11h59m0s.
func lifetime(d time.Duration) string {
	const day = 24 * time.Hour
	if d < day-30*time.Minute {
		return d.Round(time.Minute).String()
	}
	d = d.Round(time.Hour)
	days, hours := d/day, (d%day)/time.Hour
	if hours == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd %dh", days, hours)
}

func usageNames(c *x509.Certificate) string {
	var names []string
	for _, u := range c.ExtKeyUsage {
		switch u {
		case x509.ExtKeyUsageServerAuth:
			names = append(names, "serverAuth")
		case x509.ExtKeyUsageClientAuth:
			names = append(names, "clientAuth")
		case x509.ExtKeyUsageAny:
			names = append(names, "any")
		default:
			names = append(names, fmt.Sprintf("other(%d)", u))
		}
	}
	for range c.UnknownExtKeyUsage {
		names = append(names, "other")
	}
	if len(names) == 0 {
		return "none given (any)"
	}
	return strings.Join(names, ", ")
}

func hostNames(c *x509.Certificate) string {
	h := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		h = append(h, ip.String())
	}
	return strings.Join(h, ", ")
}

func newCertRenewCmd(e *env) *cobra.Command {
	var (
		caDir, certFile, keyFile string
		keepKey                  bool
		validity                 validityValue
	)
	cmd := &cobra.Command{
		Use:   "renew --ca-dir DIR --cert FILE [--key FILE] [--keep-key] [--validity D]",
		Short: "Replace a certificate with a new one for the same SPIFFE id and hosts",
		Long: `Issue a new certificate with the same SPIFFE id and DNS and IP SANs as
--cert (which the CA in --ca-dir must have signed; it may have expired) and
replace --cert and its key in place, each file whole (written aside, then
renamed): a running node that reloads its files picks the new pair up.

A new key is made unless --keep-key, which certifies the key in --key again.
--key defaults to --cert with .key for its extension. --validity defaults to
the old certificate's lifetime. Host names on an old client or admin
certificate are dropped: those kinds carry none.`,
		Example: `  keybroker cert renew --ca-dir ca --cert certs/edge-eu.crt
  keybroker cert renew --ca-dir ca --cert /etc/keybroker/central.crt --key /etc/keybroker/central.key --validity 30d
  keybroker cert renew --ca-dir ca --cert certs/billing.crt --keep-key`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" {
				keyFile = strings.TrimSuffix(certFile, filepath.Ext(certFile)) + ".key"
			}
			old, err := readLeaf(certFile)
			if err != nil {
				return usageError(err)
			}
			ca, err := openCADir(cmd.Context(), caDir)
			if err != nil {
				return err
			}
			defer ca.Close()
			if err := old.CheckSignatureFrom(ca.Cert); err != nil {
				return invalidInputf("%s was not issued by the CA in %s: issue a new one with keybroker cert issue", certFile, caDir)
			}
			id, err := identity.FromCertificate(old)
			if err != nil {
				return invalidInputf("%s: %v", certFile, err)
			}
			var hosts []string
			dropped := false
			if id.Kind.Serves() {
				hosts = strings.Split(hostNames(old), ", ")
				if hosts[0] == "" {
					hosts = nil
				}
			} else {
				dropped = hostNames(old) != ""
			}
			d := validity.d
			if d == 0 {
				d = max(old.NotAfter.Sub(old.NotBefore)-time.Minute, time.Minute)
			}
			var certPEM, keyPEM []byte
			if keepKey {
				pair, err := tls.LoadX509KeyPair(certFile, keyFile)
				if err != nil {
					return usageErrorf("--keep-key: %s and %s are not a pair: %v", certFile, keyFile, err)
				}
				priv, ok := pair.PrivateKey.(crypto.Signer)
				if !ok {
					return usageErrorf("--keep-key: %s holds no signing key", keyFile)
				}
				certPEM, err = ca.IssueKey(id, hosts, d, priv.Public())
				if err != nil {
					return err
				}
			} else if certPEM, keyPEM, err = ca.Issue(id, hosts, d); err != nil {
				return err
			}
			if err := writePair(certFile, keyFile, certPEM, keyPEM); err != nil {
				return err
			}
			what := "a new key"
			if keepKey {
				what = "the same key"
			}
			fmt.Fprintf(e.stdout, "renewed %s with %s (%s)\n", certFile, what, keyFile)
			if dropped {
				fmt.Fprintf(e.stdout, "  note     dropped the host names a %s certificate must not carry\n", id.Kind)
			}
			return printIssued(e.stdout, ca.CA, certPEM, d, d)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&caDir, "ca-dir", "", "the CA's directory (required)")
	fs.StringVar(&certFile, "cert", "", "the certificate to renew, replaced in place (required)")
	fs.StringVar(&keyFile, "key", "", "its key file, replaced in place (default: --cert with .key)")
	fs.BoolVar(&keepKey, "keep-key", false, "certify the existing key again instead of making a new one")
	fs.Var(&validity, "validity", "how long the new certificate is valid (default: the old one's lifetime)")
	_ = cmd.MarkFlagRequired("ca-dir")
	_ = cmd.MarkFlagRequired("cert")
	return cmd
}

// readChain reads every PEM certificate in path, leaf first.
func readChain(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return out, nil
}

func readLeaf(path string) (*x509.Certificate, error) {
	chain, err := readChain(path)
	if err != nil {
		return nil, err
	}
	return chain[0], nil
}

func newCertShowCmd(e *env) *cobra.Command {
	var caFile string
	cmd := &cobra.Command{
		Use:   "show FILE [--ca CA-FILE]",
		Short: "Say what a certificate is, and what is wrong with it for keybroker",
		Long: `Print a certificate's SPIFFE id, kind, usages, SANs, validity and issuer,
then what keybroker or its peers would refuse it for: no SPIFFE id (or more
than one), an extended key usage its kind needs and lacks (an edge with
serverAuth only: the central tier refuses it), a key usage without
digitalSignature, expired or not yet valid; with --ca, a chain that does not
verify against that CA (unknown authority, a name outside its trust domain).
Warnings say what the certificate carries beyond its role, and when it is
due for renewal.

Exits 0 when nothing is wrong (warnings allowed) and 7 when something is.`,
		Example: `  keybroker cert show certs/edge-eu.crt
  keybroker cert show /etc/keybroker/edge.crt --ca /etc/keybroker/ca.crt`,
		Args: exactly("FILE"),
		RunE: func(_ *cobra.Command, args []string) error {
			chain, err := readChain(args[0])
			if err != nil {
				return usageError(err)
			}
			var roots []*x509.Certificate
			if caFile != "" {
				if roots, err = readChain(caFile); err != nil {
					return usageErrorf("--ca: %v", err)
				}
			}
			return certShow(e.stdout, args[0], chain, roots, time.Now())
		},
	}
	cmd.Flags().StringVar(&caFile, "ca", "", "PEM CA certificates to verify the chain against")
	return cmd
}

func certShow(w io.Writer, file string, chain, roots []*x509.Certificate, now time.Time) error {
	c := chain[0]
	row := func(k, v string) { fmt.Fprintf(w, "%-13s%s\n", k, v) }
	row("certificate", file)
	if id, err := identity.FromCertificate(c); err == nil {
		row("id", id.String())
		row("kind", string(id.Kind))
	} else {
		var uris []string
		for _, u := range c.URIs {
			uris = append(uris, u.String())
		}
		row("id", "none ("+strings.Join(uris, ", ")+")")
	}
	row("subject", c.Subject.String())
	row("issuer", c.Issuer.String())
	row("serial", fmt.Sprintf("%x", c.SerialNumber))
	state := "valid"
	switch {
	case now.After(c.NotAfter):
		state = "expired " + lifetime(now.Sub(c.NotAfter)) + " ago"
	case now.Before(c.NotBefore):
		state = "not yet valid"
	default:
		state = "expires in " + lifetime(c.NotAfter.Sub(now))
	}
	row("valid", fmt.Sprintf("%s to %s (%s)", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), state))
	row("key usage", keyUsageNames(c.KeyUsage))
	row("ext usage", usageNames(c))
	if h := hostNames(c); h != "" {
		row("hosts", h)
	} else {
		row("hosts", "none")
	}
	if c.IsCA {
		row("ca", "yes")
	}
	findings := identity.Check(c, now)
	if len(roots) > 0 {
		if f := identity.CheckChain(c, chain[1:], roots, now); f != nil {
			findings = append(findings, *f)
		}
	}
	problems := 0
	for _, f := range findings {
		fmt.Fprintln(w, f)
		if f.Problem {
			problems++
		}
	}
	if problems > 0 {
		return verifyFailedf("%s: %d problem(s): keybroker or its peers will refuse this certificate", file, problems)
	}
	fmt.Fprintln(w, "ok: usable by keybroker as its kind")
	return nil
}

func keyUsageNames(u x509.KeyUsage) string {
	var names []string
	for _, n := range []struct {
		bit  x509.KeyUsage
		name string
	}{
		{x509.KeyUsageDigitalSignature, "digitalSignature"}, {x509.KeyUsageContentCommitment, "contentCommitment"},
		{x509.KeyUsageKeyEncipherment, "keyEncipherment"}, {x509.KeyUsageDataEncipherment, "dataEncipherment"},
		{x509.KeyUsageKeyAgreement, "keyAgreement"}, {x509.KeyUsageCertSign, "certSign"}, {x509.KeyUsageCRLSign, "crlSign"},
	} {
		if u&n.bit != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none given"
	}
	return strings.Join(names, ", ")
}

// article is "a" or "an" for a word.
func article(w string) string {
	if w != "" && strings.ContainsRune("aeiou", rune(w[0])) {
		return "an"
	}
	return "a"
}
