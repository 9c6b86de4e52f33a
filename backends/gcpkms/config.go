package gcpkms

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/api/option"

	"github.com/keybroker/keybroker/backends"
)

// Config configures a Backend.
type Config struct {
	// KeyRing is the key ring, projects/P/locations/L/keyRings/R, in which
	// CreateKey creates CryptoKeys. Its location is where GenerateRandom
	// and Health ask for HSM randomness. Required. Keys named in calls may
	// live in any key ring the credentials reach.
	KeyRing string
	// Endpoint is the service's host:port. Empty means the client library's
	// default, cloudkms.googleapis.com:443.
	Endpoint string
	// ClientOptions are passed to kms.NewKeyManagementClient after the
	// endpoint, so they may override it. Credentials come from Application
	// Default Credentials unless an option here says otherwise (tests pass
	// option.WithoutAuthentication and an insecure gRPC dial option).
	ClientOptions []option.ClientOption
	// ProtectionLevel is the protection level of the keys CreateKey makes:
	// kmspb.ProtectionLevel_HSM or kmspb.ProtectionLevel_SOFTWARE. Zero means
	// HSM, since these are roots of trust.
	ProtectionLevel kmspb.ProtectionLevel
	// Retry bounds the backend's retries of transient failures. The zero
	// value means the defaults listed on RetryConfig.
	Retry RetryConfig
	// Logger receives retry and integrity-failure logs; nil discards them.
	Logger *slog.Logger
	// Metrics registers the backend's Prometheus collectors; nil registers
	// none.
	Metrics prometheus.Registerer
}

// RetryConfig bounds the backend's own retry loop. The backend turns off
// the client library's retries, so these are the only ones: every call is
// retried on UNAVAILABLE, DEADLINE_EXCEEDED (while the caller's context is
// live), a request checksum the service rejected, and a response that
// failed an integrity check. Pauses grow exponentially with jitter and end
// when the caller's context does.
type RetryConfig struct {
	// MaxAttempts is the most attempts per operation, the first included.
	// Zero means 5; 1 disables retries.
	MaxAttempts int
	// InitialBackoff is the pause before the first retry, before jitter.
	// Zero means 100ms, the client library's default.
	InitialBackoff time.Duration
	// MaxBackoff caps a pause. Zero means 5s.
	MaxBackoff time.Duration
}

// Retry defaults.
const (
	DefaultMaxAttempts    = 5
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 5 * time.Second
)

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if backends.GCPResourceKind(c.KeyRing) != "keyRing" {
		return fmt.Errorf("gcpkms: KeyRing %q is not projects/P/locations/L/keyRings/R", c.KeyRing)
	}
	if c.Endpoint != "" {
		host, port, ok := strings.Cut(c.Endpoint, ":")
		if _, err := strconv.ParseUint(port, 10, 16); !ok || host == "" || err != nil || strings.ContainsAny(host, "/@ ") {
			return fmt.Errorf("gcpkms: Endpoint %q is not host:port", c.Endpoint)
		}
	}
	switch c.ProtectionLevel {
	case kmspb.ProtectionLevel_PROTECTION_LEVEL_UNSPECIFIED, kmspb.ProtectionLevel_HSM, kmspb.ProtectionLevel_SOFTWARE:
	default:
		return fmt.Errorf("gcpkms: ProtectionLevel %s is not HSM or SOFTWARE", c.ProtectionLevel)
	}
	return c.Retry.Validate()
}

// Validate reports the first problem with r.
func (r RetryConfig) Validate() error {
	var errs []error
	if r.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("gcpkms: Retry.MaxAttempts %d is negative", r.MaxAttempts))
	}
	if r.InitialBackoff < 0 {
		errs = append(errs, fmt.Errorf("gcpkms: Retry.InitialBackoff %v is negative", r.InitialBackoff))
	}
	if r.MaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("gcpkms: Retry.MaxBackoff %v is negative", r.MaxBackoff))
	}
	if r.MaxBackoff > 0 && r.InitialBackoff > r.MaxBackoff {
		errs = append(errs, fmt.Errorf("gcpkms: Retry.InitialBackoff %v exceeds MaxBackoff %v", r.InitialBackoff, r.MaxBackoff))
	}
	return errors.Join(errs...)
}

func (r RetryConfig) withDefaults() RetryConfig {
	if r.MaxAttempts == 0 {
		r.MaxAttempts = DefaultMaxAttempts
	}
	if r.InitialBackoff == 0 {
		r.InitialBackoff = DefaultInitialBackoff
	}
	if r.MaxBackoff == 0 {
		r.MaxBackoff = max(DefaultMaxBackoff, r.InitialBackoff)
	}
	return r
}

// location is the projects/P/locations/L prefix of a key ring.
func location(keyRing string) string {
	return keyRing[:strings.Index(keyRing, "/keyRings/")]
}
