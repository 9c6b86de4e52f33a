package kmsplugin

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsv2 "k8s.io/kms/apis/v2"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

// Limits of the KMS v2 API, as the apiserver enforces them.
const (
	// MaxCiphertext and MaxKeyID are the apiserver's bounds on a
	// ciphertext and a key_id.
	MaxCiphertext = 1024
	MaxKeyID      = 1024
	// MaxAnnotations bounds the annotations' keys and values together.
	MaxAnnotations = 32 << 10
	// MaxPlaintext bounds what Encrypt accepts: the apiserver sends a
	// 32-byte seed; 512 bytes keep any ciphertext under MaxCiphertext.
	MaxPlaintext = 512
	// maxMessage bounds a request on the socket: the limits above plus
	// framing.
	maxMessage = 64 << 10
)

// Version is the KMS API version Status reports.
const Version = "v2"

// Healthy is Status's healthz when all is well.
const Healthy = "ok"

// DefaultGrace is Config.Grace's default.
const DefaultGrace = 2 * time.Minute

// DefaultCluster is Config.Cluster's default.
const DefaultCluster = "kubernetes"

// FormatAnnotation is the annotation Encrypt writes, and FormatVersion its
// value: the plugin's format, so that a later one can be told apart.
const (
	FormatAnnotation = "format.keybroker.dev"
	FormatVersion    = "1"
)

// ContextKey is the encryption-context key that binds every ciphertext to
// its cluster.
const ContextKey = "kubernetes.io/cluster"

// keyIDLabel starts every key_id's hash input.
const keyIDLabel = "keybroker/k8s-kms/v1"

// KMS is the part of the Go SDK the plugin uses; *client.Client is one.
type KMS interface {
	Encrypt(ctx context.Context, key string, plaintext []byte, ectx map[string]string) (*client.Ciphertext, error)
	Decrypt(ctx context.Context, ciphertext []byte, ectx map[string]string) (*client.Plaintext, error)
	DescribeKey(ctx context.Context, key string) (*kbv1.KeyMetadata, error)
}

var _ KMS = (*client.Client)(nil)

// Config configures a Service.
type Config struct {
	// Key is the keybroker key (AES-256-GCM, derive or wrap mode) that
	// seals the apiserver's seeds. Required.
	Key string
	// Cluster names the Kubernetes cluster in every ciphertext's
	// encryption context: a ciphertext opens only with the same name.
	// Give every control-plane node of a cluster the same one. Default
	// DefaultCluster.
	Cluster string
	// Grace is how long Status keeps answering from the last good key
	// metadata while no node answers (default DefaultGrace).
	Grace time.Duration
	// Logger receives a line per call (nil: none).
	Logger *slog.Logger
	// Registerer receives the plugin's metrics (nil: none).
	Registerer prometheus.Registerer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if !envelope.ValidKeyID(c.Key) {
		return fmt.Errorf("kmsplugin: key %q is not a keybroker key id", c.Key)
	}
	if len(c.Cluster) > 1024 {
		return errors.New("kmsplugin: cluster name longer than 1024 bytes")
	}
	if c.Grace < 0 {
		return errors.New("kmsplugin: grace must not be negative")
	}
	return nil
}

// Service is the KeyManagementService.
type Service struct {
	kmsv2.UnimplementedKeyManagementServiceServer

	kms  KMS
	key  string
	ectx map[string]string
	cfg  Config
	log  *slog.Logger
	m    *metrics

	mu sync.Mutex
	// meta is the last key metadata a node gave, read at metaAt.
	meta   *kbv1.KeyMetadata
	metaAt time.Time
}

var _ kmsv2.KeyManagementServiceServer = (*Service)(nil)

// New makes a Service sealing with key cfg.Key through kms. It calls
// nothing: Status and the first call read the key's metadata.
func New(kms KMS, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Cluster == "" {
		cfg.Cluster = DefaultCluster
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Service{kms: kms, key: cfg.Key, ectx: map[string]string{ContextKey: cfg.Cluster}, cfg: cfg,
		log: log.With("key", cfg.Key), m: m}, nil
}

// KeyID is the KMS v2 key_id of a version of the key meta describes; ""
// when meta has no such version.
func KeyID(meta *kbv1.KeyMetadata, version uint32) string {
	for _, v := range meta.GetVersions() {
		if v.GetVersion() != version {
			continue
		}
		h := sha256.New()
		h.Write([]byte(keyIDLabel))
		h.Write([]byte{0})
		h.Write([]byte(meta.GetKeyId()))
		h.Write([]byte{0})
		var b [8 + 4 + 4 + 8 + 4]byte
		binary.BigEndian.PutUint64(b[0:], uint64(meta.GetCreatedAt().GetSeconds()))
		binary.BigEndian.PutUint32(b[8:], uint32(meta.GetCreatedAt().GetNanos()))
		binary.BigEndian.PutUint32(b[12:], version)
		binary.BigEndian.PutUint64(b[16:], uint64(v.GetCreatedAt().GetSeconds()))
		binary.BigEndian.PutUint32(b[24:], uint32(v.GetCreatedAt().GetNanos()))
		h.Write(b[:])
		return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
	}
	return ""
}

// Check says why meta is not a key the plugin can use, or nil.
func Check(meta *kbv1.KeyMetadata) error {
	if meta.GetType() != kbv1.KeyType_KEY_TYPE_AES_256_GCM {
		return fmt.Errorf("key %s is %s, not AES-256-GCM", meta.GetKeyId(), meta.GetType())
	}
	switch meta.GetMode() {
	case kbv1.KeyMode_KEY_MODE_DERIVE, kbv1.KeyMode_KEY_MODE_WRAP:
	default:
		return fmt.Errorf("key %s is in %s: its ciphertexts may exceed the apiserver's %d bytes; use a derive or wrap key", meta.GetKeyId(), meta.GetMode(), MaxCiphertext)
	}
	if meta.GetCreatedAt() == nil {
		return fmt.Errorf("key %s has no creation time to derive key_id from", meta.GetKeyId())
	}
	if KeyID(meta, meta.GetPrimaryVersion()) == "" {
		return fmt.Errorf("key %s does not list its primary version %d", meta.GetKeyId(), meta.GetPrimaryVersion())
	}
	return nil
}

// unhealthy says why the key cannot be used now, or "".
func unhealthy(meta *kbv1.KeyMetadata) string {
	switch meta.GetState() {
	case kbv1.KeyState_KEY_STATE_ENABLED:
	case kbv1.KeyState_KEY_STATE_DISABLED:
		return "key " + meta.GetKeyId() + " is disabled"
	case kbv1.KeyState_KEY_STATE_PENDING_DELETION:
		return "key " + meta.GetKeyId() + " is pending deletion"
	default:
		return "key " + meta.GetKeyId() + " is in state " + meta.GetState().String()
	}
	if err := Check(meta); err != nil {
		return err.Error()
	}
	return ""
}

// transient reports whether err may pass on its own: no node answered.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Canceled:
		return true
	}
	return false
}

// Refresh reads the key's metadata from the nearest node and keeps it.
// It returns an error for a key the plugin cannot use (Check), and the
// node's error when none answered.
func (s *Service) Refresh(ctx context.Context) (*kbv1.KeyMetadata, error) {
	meta, err := s.kms.DescribeKey(ctx, s.key)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	// An answer from a node that lags (an edge behind another) must not
	// replace a newer one: revisions only grow. Any answer is a node
	// answering, though.
	if s.meta == nil || meta.GetRevision() >= s.meta.GetRevision() {
		s.meta = meta
	}
	meta, s.metaAt = s.meta, s.cfg.Now()
	s.mu.Unlock()
	return meta, Check(meta)
}

// errNoVersion is a version the key's metadata does not list (yet: the
// node asked may lag the one that sealed).
var errNoVersion = errors.New("kmsplugin: no such key version")

// cached returns the last metadata and when it was read.
func (s *Service) cached() (*kbv1.KeyMetadata, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta, s.metaAt
}

// keyID is the key_id of version, reading the metadata again when the
// cached one does not have it (a rotation it has not seen yet).
func (s *Service) keyID(ctx context.Context, version uint32) (string, error) {
	if meta, _ := s.cached(); meta != nil {
		if id := KeyID(meta, version); id != "" {
			return id, nil
		}
	}
	meta, err := s.Refresh(ctx)
	if meta == nil {
		return "", err
	}
	if id := KeyID(meta, version); id != "" {
		return id, nil
	}
	return "", fmt.Errorf("%w: key %s version %d", errNoVersion, s.key, version)
}

// Status reports the version, health and current key_id.
func (s *Service) Status(ctx context.Context, _ *kmsv2.StatusRequest) (*kmsv2.StatusResponse, error) {
	start := s.cfg.Now()
	meta, err := s.Refresh(ctx)
	resp := &kmsv2.StatusResponse{Version: Version, Healthz: Healthy}
	switch {
	case meta != nil:
		resp.KeyId = KeyID(meta, meta.GetPrimaryVersion())
		if why := unhealthy(meta); why != "" {
			resp.Healthz = why
		}
	case transient(err):
		last, at := s.cached()
		if last != nil {
			resp.KeyId = KeyID(last, last.GetPrimaryVersion())
		}
		if age := s.cfg.Now().Sub(at); last == nil || age > s.cfg.Grace {
			resp.Healthz = fmt.Sprintf("no keybroker node has answered for key %s for longer than %s: %s", s.key, s.cfg.Grace, status.Convert(err).Message())
		} else if why := unhealthy(last); why != "" {
			resp.Healthz = why
		} else {
			s.log.Warn("kms-plugin: status from the last good answer", "age", age, "err", err)
		}
	default:
		if last, _ := s.cached(); last != nil {
			resp.KeyId = KeyID(last, last.GetPrimaryVersion())
		}
		resp.Healthz = fmt.Sprintf("key %s: %s", s.key, status.Convert(err).Message())
	}
	healthy := resp.Healthz == Healthy
	s.m.healthy.Set(b2f(healthy))
	s.m.observe("status", resp.KeyId, "", codes.OK, s.cfg.Now().Sub(start))
	if !healthy {
		s.log.Warn("kms-plugin: unhealthy", "healthz", resp.Healthz, "key_id", resp.KeyId)
	} else {
		s.log.Debug("kms-plugin: status", "key_id", resp.KeyId)
	}
	return resp, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// uidRE is what keybroker accepts as a request id.
var uidRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// withUID sends uid to keybroker as the request id when it is one.
func withUID(ctx context.Context, uid string) context.Context {
	if uidRE.MatchString(uid) {
		return client.WithRequestID(ctx, uid)
	}
	return ctx
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "kms-plugin: "+format, args...)
}

// Encrypt seals req.Plaintext under the key's primary version.
func (s *Service) Encrypt(ctx context.Context, req *kmsv2.EncryptRequest) (resp *kmsv2.EncryptResponse, err error) {
	start := s.cfg.Now()
	keyID := ""
	defer func() { s.done("encrypt", req.GetUid(), keyID, 0, start, err) }()
	if n := len(req.GetPlaintext()); n == 0 || n > MaxPlaintext {
		return nil, invalid("plaintext of %d bytes: must be 1 to %d", n, MaxPlaintext)
	}
	ct, err := s.kms.Encrypt(withUID(ctx, req.GetUid()), s.key, req.GetPlaintext(), s.ectx)
	if err != nil {
		return nil, fromKeybroker("encrypt", err)
	}
	if len(ct.Ciphertext) > MaxCiphertext {
		return nil, status.Errorf(codes.FailedPrecondition, "kms-plugin: key %s made a ciphertext of %d bytes, over the apiserver's %d", s.key, len(ct.Ciphertext), MaxCiphertext)
	}
	// The version that sealed, from the ciphertext itself: what Decrypt
	// will see.
	h, _, err := envelope.ParseHeader(ct.Ciphertext)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "kms-plugin: keybroker returned a ciphertext that does not parse: %v", err)
	}
	if keyID, err = s.keyID(ctx, h.Version); err != nil {
		if errors.Is(err, errNoVersion) {
			// Sealed by a node ahead of the one describing the key: the
			// apiserver tries again.
			return nil, status.Errorf(codes.Unavailable, "kms-plugin: encrypt: key %s version %d is not known here yet", s.key, h.Version)
		}
		return nil, fromKeybroker("encrypt", err)
	}
	return &kmsv2.EncryptResponse{Ciphertext: ct.Ciphertext, KeyId: keyID,
		Annotations: map[string][]byte{FormatAnnotation: []byte(FormatVersion)}}, nil
}

// Decrypt opens req.Ciphertext under the version its header names, once
// req.KeyId and req.Annotations agree with it.
func (s *Service) Decrypt(ctx context.Context, req *kmsv2.DecryptRequest) (resp *kmsv2.DecryptResponse, err error) {
	start := s.cfg.Now()
	var version uint32
	// The metric's key_id label is the one the plugin computed, set once
	// the request's matched it: a caller's string never becomes a label
	// (unbounded, and not always valid UTF-8).
	keyID := ""
	defer func() { s.done("decrypt", req.GetUid(), keyID, version, start, err) }()
	if err := checkDecrypt(req); err != nil {
		return nil, err
	}
	h, _, err := envelope.ParseHeader(req.GetCiphertext())
	if err != nil {
		return nil, invalid("ciphertext: %v", err)
	}
	version = h.Version
	if h.KeyID != s.key {
		return nil, invalid("ciphertext is sealed under key %s; this plugin serves key %s", h.KeyID, s.key)
	}
	want, err := s.keyID(ctx, h.Version)
	if errors.Is(err, errNoVersion) {
		return nil, invalid("key %s has no version %d, which the ciphertext names", s.key, h.Version)
	}
	if err != nil {
		return nil, fromKeybroker("decrypt", err)
	}
	if req.GetKeyId() != want {
		return nil, invalid("key_id %.64q is not the key_id of key %s version %d, which sealed the ciphertext", req.GetKeyId(), s.key, h.Version)
	}
	keyID = want
	pt, err := s.kms.Decrypt(withUID(ctx, req.GetUid()), req.GetCiphertext(), s.ectx)
	if err != nil {
		return nil, fromKeybroker("decrypt", err)
	}
	return &kmsv2.DecryptResponse{Plaintext: pt.Plaintext}, nil
}

// fqdnRE is a fully qualified domain name, as the apiserver checks
// annotation keys: at least two dot-separated DNS labels, 253 bytes at
// most.
var fqdnRE = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// checkDecrypt applies the API's limits and the plugin's annotations to
// a Decrypt request.
func checkDecrypt(req *kmsv2.DecryptRequest) error {
	if n := len(req.GetCiphertext()); n == 0 || n > MaxCiphertext {
		return invalid("ciphertext of %d bytes: must be 1 to %d", n, MaxCiphertext)
	}
	if n := len(req.GetKeyId()); n == 0 || n > MaxKeyID {
		return invalid("key_id of %d bytes: must be 1 to %d", n, MaxKeyID)
	}
	total := 0
	for k, v := range req.GetAnnotations() {
		total += len(k) + len(v)
		if len(k) > 253 || !fqdnRE.MatchString(k) {
			return invalid("annotation key %.64q is not a fully qualified domain name", k)
		}
	}
	if total > MaxAnnotations {
		return invalid("annotations of %d bytes: at most %d", total, MaxAnnotations)
	}
	for k, v := range req.GetAnnotations() {
		if k != FormatAnnotation {
			return invalid("annotation %.64q is not one this plugin writes (only %s)", k, FormatAnnotation)
		}
		if string(v) != FormatVersion {
			return invalid("annotation %s is %.16q; this plugin reads format %s", k, v, FormatVersion)
		}
	}
	if _, ok := req.GetAnnotations()[FormatAnnotation]; !ok {
		return invalid("annotation %s is missing", FormatAnnotation)
	}
	return nil
}

// fromKeybroker passes keybroker's error on with its code, saying which
// step failed.
func fromKeybroker(op string, err error) error {
	if _, ok := status.FromError(err); !ok {
		return status.Errorf(codes.Internal, "kms-plugin: %s: %v", op, err)
	}
	st := status.Convert(err)
	if st.Code() == codes.InvalidArgument && strings.HasPrefix(st.Message(), "kms-plugin:") {
		return err
	}
	return status.Errorf(st.Code(), "kms-plugin: %s through keybroker: %s", op, st.Message())
}

// done logs and counts one call.
func (s *Service) done(op, uid, keyID string, version uint32, start time.Time, err error) {
	d := s.cfg.Now().Sub(start)
	code := status.Code(err)
	s.m.observe(op, keyID, uid, code, d)
	attrs := []any{"op", op, "uid", uid, "key_id", keyID, "code", code.String(), "duration", d}
	if version != 0 {
		attrs = append(attrs, "version", version)
	}
	if err != nil {
		s.log.Warn("kms-plugin: call failed", append(attrs, "err", status.Convert(err).Message())...)
		return
	}
	s.log.Debug("kms-plugin: call", attrs...)
}

// Server is a gRPC server with the Service registered and the request
// size bounded.
func (s *Service) Server(opts ...grpc.ServerOption) *grpc.Server {
	g := grpc.NewServer(append([]grpc.ServerOption{grpc.MaxRecvMsgSize(maxMessage)}, opts...)...)
	kmsv2.RegisterKeyManagementServiceServer(g, s)
	return g
}

// Serve serves the Service on ln until ctx is done, then stops
// gracefully (in-flight calls finish) and closes ln.
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	g := s.Server()
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			g.GracefulStop()
		case <-stopped:
		}
	}()
	err := g.Serve(ln)
	close(stopped)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
