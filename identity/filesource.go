package identity

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultReloadInterval is how often a FileSource or a Revocation looks
// at its files.
const DefaultReloadInterval = time.Second

// FileOptions configure how files are followed.
type FileOptions struct {
	// ReloadInterval is how often the files are stat'ed for a change
	// (0: DefaultReloadInterval; negative: never — only Reload re-reads
	// them).
	ReloadInterval time.Duration
	// Logger receives the warnings of reloads that fail (nil: none).
	Logger *slog.Logger
}

func (o FileOptions) interval() time.Duration {
	if o.ReloadInterval == 0 {
		return DefaultReloadInterval
	}
	return o.ReloadInterval
}

func (o FileOptions) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

// FileSource is a Source read from PEM files: a CA bundle, a certificate
// chain and its private key.
//
// It stats the files every ReloadInterval — modification time, size and
// inode of what each name resolves to, so a Kubernetes secret volume's
// symlink swap counts as a change — and re-reads them when any differs;
// Reload re-reads them at once (SIGHUP). A read that fails (a file half
// written, a certificate that does not match the key, a bundle with no
// certificate) keeps the Material in force and is retried on the next
// tick; a failure that persists (seen twice in a row: not a rotation
// caught half-way) is logged once as a warning.
type FileSource struct {
	files TLSFiles
	opts  FileOptions
	log   *slog.Logger

	cur     atomic.Pointer[Material]
	changes chan struct{}

	mu     sync.Mutex // serialises reloads
	seen   fileStamps // the stamps of the files behind cur
	failed string     // the last read's failure ("" after a success)
	logged string     // the failure last logged

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

var _ Source = (*FileSource)(nil)

// NewFileSource reads files and follows them. It fails if the first read
// fails: a process never starts without an identity.
func NewFileSource(files TLSFiles, opts FileOptions) (*FileSource, error) {
	if err := files.Validate(); err != nil {
		return nil, err
	}
	s := &FileSource{files: files, opts: opts, log: opts.logger(), changes: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	stamps := stampFiles(files.CA, files.Cert, files.Key)
	m, err := files.Material()
	if err != nil {
		return nil, err
	}
	s.cur.Store(m)
	s.seen = stamps
	if d := opts.interval(); d > 0 {
		go s.poll(d)
	} else {
		close(s.done)
	}
	return s, nil
}

// Current is the identity in force.
func (s *FileSource) Current() *Material { return s.cur.Load() }

// Changes receives after Current changed.
func (s *FileSource) Changes() <-chan struct{} { return s.changes }

// Close stops following the files.
func (s *FileSource) Close() error {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	return nil
}

// Reload re-reads the files now, whether or not they look changed. It
// returns the failure of a read (the Material in force stays).
func (s *FileSource) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load(stampFiles(s.files.CA, s.files.Cert, s.files.Key))
}

func (s *FileSource) poll(d time.Duration) {
	defer close(s.done)
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			stamps := stampFiles(s.files.CA, s.files.Cert, s.files.Key)
			if !stamps.equal(s.seen) || s.failed != "" {
				_ = s.load(stamps)
			}
			s.mu.Unlock()
		}
	}
}

// load reads the files (whose stamps before reading are stamps) and
// installs what they hold if it differs. s.mu is held.
func (s *FileSource) load(stamps fileStamps) error {
	m, err := s.files.Material()
	if err != nil {
		// A rotation caught half-way (the certificate renamed in, the
		// key not yet) fails once; a failure seen twice in a row
		// persists, and is logged once.
		msg := err.Error()
		if msg == s.failed && msg != s.logged {
			s.logged = msg
			s.log.Warn("identity files could not be reloaded; the identity in force stays until they read whole",
				"ca", s.files.CA, "cert", s.files.Cert, "key", s.files.Key, "err", err)
		}
		s.failed = msg
		return err
	}
	if s.logged != "" {
		s.log.Info("identity files read whole again", "cert", s.files.Cert)
	}
	s.failed, s.logged = "", ""
	s.seen = stamps
	if sameMaterial(s.cur.Load(), m) {
		return nil
	}
	s.cur.Store(m)
	s.log.Info("identity reloaded", "id", m.ID.String(), "serial", m.Certificate.Leaf.SerialNumber.Text(16),
		"not_after", m.Certificate.Leaf.NotAfter.UTC().Format(time.RFC3339), "roots", len(m.Roots))
	select {
	case s.changes <- struct{}{}:
	default:
	}
	return nil
}

// sameMaterial says whether a and b present the same chain and trust the
// same roots.
func sameMaterial(a, b *Material) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !slices.EqualFunc(a.Certificate.Certificate, b.Certificate.Certificate, bytes.Equal) {
		return false
	}
	return slices.EqualFunc(a.Roots, b.Roots, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

// fileStamp is what says a file changed without reading it.
type fileStamp struct {
	mtime time.Time
	size  int64
	ino   uint64
	err   string
}

type fileStamps []fileStamp

func (a fileStamps) equal(b fileStamps) bool { return slices.Equal(a, b) }

func stampFiles(paths ...string) fileStamps {
	out := make(fileStamps, len(paths))
	for i, p := range paths {
		if p == "" {
			continue
		}
		st, err := os.Stat(p) // follows links: a swapped target is a change
		if err != nil {
			out[i] = fileStamp{err: err.Error()}
			continue
		}
		out[i] = fileStamp{mtime: st.ModTime(), size: st.Size()}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			out[i].ino = sys.Ino
		}
	}
	return out
}

// Material reads the files as a Material: every CERTIFICATE block of the
// CA bundle is a root, and the certificate must match the key.
func (f TLSFiles) Material() (*Material, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("identity: tls.ca: %w", err)
	}
	roots, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: tls.ca %s: %w", f.CA, err)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("identity: certificate %s / key %s: %w", f.Cert, f.Key, err)
	}
	m, err := NewMaterial(&cert, roots)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, f.Cert)
	}
	return m, nil
}

// parseCerts parses every CERTIFICATE block of a PEM bundle; other blocks
// are an error, as is a bundle without certificates.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a %q PEM block where certificates were expected", b.Type)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(data)) != 0 {
		return nil, errors.New("text after the last PEM block (a file half written?)")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificates")
	}
	return out, nil
}
