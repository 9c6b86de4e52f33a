package identity

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RevocationFiles name the optional revocation inputs.
type RevocationFiles struct {
	// CRL is a file of X.509 certificate revocation lists, PEM ("X509
	// CRL" blocks) or one DER list. Each must be signed by one of the
	// current trust anchors.
	CRL string
	// Deny is a file of denied identities, one a line: a SPIFFE id, or
	// serial:<hex> (colons allowed) for a certificate serial number;
	// # starts a comment.
	Deny string
}

// Revocation says whether a certificate chain was revoked, by a CRL or a
// deny list. Both files are followed like a FileSource's: stat'ed every
// ReloadInterval, re-read on Reload; a file that does not read whole, or a
// CRL whose signature does not check against the current roots, keeps the
// lists in force, is retried, and is logged once if it persists.
//
// # Stale CRLs
//
// A CRL past its NextUpdate is still honoured — a list of revoked
// certificates does not become less true with age, and dropping it would
// un-revoke them — and a warning says it is stale, once per list.
type Revocation struct {
	files RevocationFiles
	roots func() []*x509.Certificate
	log   *slog.Logger
	now   func() time.Time

	cur     atomic.Pointer[revList]
	changes chan struct{}

	mu       sync.Mutex
	seen     fileStamps
	failed   string          // the last read's failure
	logged   string          // the failure last logged
	stale    map[string]bool // CRLs (by number and issuer) reported stale
	lastRoot []*x509.Certificate

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// revList is one reading of the revocation files.
type revList struct {
	crls    []*x509.RevocationList
	serials map[string]crlEntry // issuer raw subject + serial → entry
	denyIDs map[Identity]bool
	denySNs map[string]bool // lower-case hex serials
}

type crlEntry struct {
	at     time.Time
	issuer string
}

// NewRevocation reads files and follows them; roots returns the trust
// anchors CRLs must be signed by (those of the Source in force). It fails
// if the first read fails. Neither file named: nil, nil.
func NewRevocation(files RevocationFiles, roots func() []*x509.Certificate, opts FileOptions) (*Revocation, error) {
	if files.CRL == "" && files.Deny == "" {
		return nil, nil
	}
	r := &Revocation{files: files, roots: roots, log: opts.logger(), now: time.Now, changes: make(chan struct{}, 1),
		stale: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	r.mu.Lock()
	err := r.load(stampFiles(files.CRL, files.Deny))
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if d := opts.interval(); d > 0 {
		go r.poll(d)
	} else {
		close(r.done)
	}
	return r, nil
}

// Changes receives after the lists changed.
func (r *Revocation) Changes() <-chan struct{} {
	if r == nil {
		return nil
	}
	return r.changes
}

// Close stops following the files.
func (r *Revocation) Close() error {
	if r == nil {
		return nil
	}
	r.once.Do(func() { close(r.stop) })
	<-r.done
	return nil
}

// Reload re-reads the files now (and re-checks the CRLs' signatures
// against the current roots).
func (r *Revocation) Reload() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.load(stampFiles(r.files.CRL, r.files.Deny))
}

func (r *Revocation) poll(d time.Duration) {
	defer close(r.done)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.mu.Lock()
			stamps := stampFiles(r.files.CRL, r.files.Deny)
			rootsChanged := !sameCerts(r.lastRoot, r.roots())
			if !stamps.equal(r.seen) || r.failed != "" || rootsChanged {
				_ = r.load(stamps)
			}
			r.warnStale(r.cur.Load())
			r.mu.Unlock()
		}
	}
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// Revoked says whether chain (leaf first) is revoked, and why in words:
// any certificate of it listed by a CRL of its issuer or by serial on the
// deny list, or the leaf's SPIFFE id on the deny list.
func (r *Revocation) Revoked(chain []*x509.Certificate) (reason string, revoked bool) {
	if r == nil || len(chain) == 0 {
		return "", false
	}
	l := r.cur.Load()
	if id, err := FromCertificate(chain[0]); err == nil && l.denyIDs[id] {
		return fmt.Sprintf("%s is on the deny list (%s)", id, r.files.Deny), true
	}
	for i, c := range chain {
		sn := c.SerialNumber.Text(16)
		what := "the certificate"
		if i > 0 {
			what = fmt.Sprintf("CA certificate %q in its chain", c.Subject.CommonName)
		}
		if l.denySNs[sn] {
			return fmt.Sprintf("%s (serial %s) is on the deny list (%s)", what, sn, r.files.Deny), true
		}
		if e, ok := l.serials[string(c.RawIssuer)+"\x00"+sn]; ok {
			return fmt.Sprintf("%s (serial %s) was revoked at %s by the CRL of %s (%s)", what, sn,
				e.at.UTC().Format(time.RFC3339), e.issuer, r.files.CRL), true
		}
	}
	return "", false
}

// load reads the files into a new list. r.mu is held.
func (r *Revocation) load(stamps fileStamps) error {
	roots := r.roots()
	l, err := r.read(roots)
	if err != nil {
		// Logged once it persists (twice in a row), as FileSource does.
		msg := err.Error()
		if msg == r.failed && msg != r.logged {
			r.logged = msg
			r.log.Warn("revocation files could not be reloaded; the lists in force stay", "crl", r.files.CRL, "deny", r.files.Deny, "err", err)
		}
		r.failed = msg
		return err
	}
	if r.logged != "" {
		r.log.Info("revocation files read whole again")
	}
	r.failed, r.logged = "", ""
	r.seen = stamps
	r.lastRoot = roots
	old := r.cur.Swap(l)
	r.warnStale(l)
	if old != nil {
		r.log.Info("revocation lists reloaded", "crl_entries", len(l.serials), "deny_entries", len(l.denyIDs)+len(l.denySNs))
		select {
		case r.changes <- struct{}{}:
		default:
		}
	}
	return nil
}

func (r *Revocation) warnStale(l *revList) {
	if l == nil {
		return
	}
	now := r.now()
	for _, c := range l.crls {
		k := c.Number.String() + "\x00" + string(c.RawIssuer)
		if !c.NextUpdate.IsZero() && now.After(c.NextUpdate) && !r.stale[k] {
			r.stale[k] = true
			r.log.Warn("the CRL is past its next update; it is still honoured — publish a fresh one",
				"crl", r.files.CRL, "issuer", c.Issuer.String(), "number", c.Number, "next_update", c.NextUpdate.UTC().Format(time.RFC3339))
		}
	}
}

func (r *Revocation) read(roots []*x509.Certificate) (*revList, error) {
	l := &revList{serials: map[string]crlEntry{}, denyIDs: map[Identity]bool{}, denySNs: map[string]bool{}}
	if r.files.CRL != "" {
		data, err := os.ReadFile(r.files.CRL)
		if err != nil {
			return nil, fmt.Errorf("identity: tls.crl: %w", err)
		}
		if l.crls, err = parseCRLs(data, roots); err != nil {
			return nil, fmt.Errorf("identity: tls.crl %s: %w", r.files.CRL, err)
		}
		for _, c := range l.crls {
			for _, e := range c.RevokedCertificateEntries {
				l.serials[string(c.RawIssuer)+"\x00"+e.SerialNumber.Text(16)] = crlEntry{at: e.RevocationTime, issuer: c.Issuer.String()}
			}
		}
	}
	if r.files.Deny != "" {
		data, err := os.ReadFile(r.files.Deny)
		if err != nil {
			return nil, fmt.Errorf("identity: tls.deny: %w", err)
		}
		if err := parseDeny(data, l); err != nil {
			return nil, fmt.Errorf("identity: tls.deny %s: %w", r.files.Deny, err)
		}
	}
	return l, nil
}

// parseCRLs parses PEM X509 CRL blocks, or one DER list, and checks each
// is signed by one of roots.
func parseCRLs(data []byte, roots []*x509.Certificate) ([]*x509.RevocationList, error) {
	var ders [][]byte
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN")) {
		rest := data
		for {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "X509 CRL" {
				return nil, fmt.Errorf("a %q PEM block where X509 CRL was expected", b.Type)
			}
			ders = append(ders, b.Bytes)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, errors.New("text after the last PEM block (a file half written?)")
		}
		if len(ders) == 0 {
			return nil, errors.New("no X509 CRL PEM block")
		}
	} else {
		ders = [][]byte{data}
	}
	out := make([]*x509.RevocationList, 0, len(ders))
	for i, der := range ders {
		c, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("CRL %d: %w", i+1, err)
		}
		signed := false
		for _, root := range roots {
			if bytes.Equal(root.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(root) == nil {
				signed = true
				break
			}
		}
		if !signed {
			return nil, fmt.Errorf("CRL %d (issuer %s) is not signed by any CA of tls.ca: refused", i+1, c.Issuer)
		}
		out = append(out, c)
	}
	return out, nil
}

// parseDeny parses a deny list into l.
func parseDeny(data []byte, l *revList) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		switch {
		case line == "":
		case strings.HasPrefix(line, "serial:"):
			hex := strings.ReplaceAll(strings.TrimPrefix(line, "serial:"), ":", "")
			v, ok := new(big.Int).SetString(hex, 16)
			if !ok || hex == "" || strings.HasPrefix(hex, "-") || strings.HasPrefix(hex, "+") {
				return fmt.Errorf("line %d: %q is not serial:<hex>", n, line)
			}
			l.denySNs[v.Text(16)] = true
		default:
			id, err := Parse(line)
			if err != nil {
				return fmt.Errorf("line %d: want a SPIFFE id or serial:<hex>: %w", n, err)
			}
			l.denyIDs[id] = true
		}
	}
	return sc.Err()
}
