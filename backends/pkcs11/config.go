package pkcs11

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/secret"
)

// Defaults for the zero values of Config.
const (
	// DefaultMaxSessionsCap caps the default MaxSessions (2×GOMAXPROCS).
	DefaultMaxSessionsCap = 32
	// DefaultBreakerThreshold is the default number of consecutive failed
	// recoveries that open the circuit breaker.
	DefaultBreakerThreshold = 3
	// DefaultBreakerCooldown is how long the open breaker fails fast by
	// default.
	DefaultBreakerCooldown = 10 * time.Second
	// MaxSessionsLimit is the largest MaxSessions accepted.
	MaxSessionsLimit = 1024
)

// Config configures a Backend. Open builds one from a pkcs11: URI.
type Config struct {
	// ModulePath is the absolute path of the PKCS#11 module (shared library)
	// to load, e.g. /usr/lib/softhsm/libsofthsm2.so.
	ModulePath string

	// TokenLabel selects the token whose label is exactly this. SoftHSM puts
	// tokens initialised with --free in random slots, so select by label or
	// serial, not by slot. At least one of TokenLabel, TokenSerial and SlotID
	// is required; every one given must match.
	TokenLabel string
	// TokenSerial selects the token with this serial number.
	TokenSerial string
	// TokenManufacturer, when set, must equal the token's manufacturer ID.
	TokenManufacturer string
	// TokenModel, when set, must equal the token's model.
	TokenModel string
	// SlotID, when not nil, selects the token in this slot.
	SlotID *uint

	// PIN is the user PIN. New keeps its own copy (the backend logs in again
	// after a recovery) and destroys it on Close; the caller keeps ownership
	// of this value.
	PIN *secret.Bytes

	// MaxSessions bounds the sessions the backend opens, and so the
	// operations it runs at once; further callers wait for a session (the
	// wait honours their context). Zero means 2×GOMAXPROCS, at most
	// DefaultMaxSessionsCap. One more session is kept open for the login.
	MaxSessions int

	// BreakerThreshold is the number of consecutive failed recoveries after
	// which the backend fails fast with ErrUnavailable. Zero means
	// DefaultBreakerThreshold.
	BreakerThreshold int
	// BreakerCooldown is how long the backend fails fast before letting one
	// call probe the token again. Zero means DefaultBreakerCooldown.
	BreakerCooldown time.Duration
	// Now is the breaker's clock; nil means time.Now. Tests inject a fake
	// clock to drive the breaker without sleeping.
	Now func() time.Time

	// RequireNeverExtractable also refuses root keys whose
	// CKA_NEVER_EXTRACTABLE or CKA_ALWAYS_SENSITIVE is false: keys that were
	// extractable or readable at some time, such as imported or unwrapped
	// keys. Keys with CKA_EXTRACTABLE true or CKA_SENSITIVE false are always
	// refused.
	RequireNeverExtractable bool

	// Logger receives the backend's logs (recoveries, breaker changes); nil
	// discards them. The PIN is never logged.
	Logger *slog.Logger
	// Metrics registers the backend's Prometheus metrics; nil registers none.
	// Backends sharing a registerer and a token share their series.
	Metrics prometheus.Registerer
}

// Validate checks c without touching the module.
func (c *Config) Validate() error {
	var errs []error
	switch {
	case c.ModulePath == "":
		errs = append(errs, errors.New("ModulePath is required"))
	case !filepath.IsAbs(c.ModulePath):
		errs = append(errs, fmt.Errorf("ModulePath %q is not absolute", c.ModulePath))
	}
	if c.TokenLabel == "" && c.TokenSerial == "" && c.SlotID == nil {
		errs = append(errs, errors.New("no token selected: set TokenLabel, TokenSerial or SlotID"))
	}
	if c.PIN.Len() == 0 {
		errs = append(errs, errors.New("PIN is required"))
	}
	if c.MaxSessions < 0 || c.MaxSessions > MaxSessionsLimit {
		errs = append(errs, fmt.Errorf("MaxSessions %d out of range 0..%d", c.MaxSessions, MaxSessionsLimit))
	}
	if c.BreakerThreshold < 0 {
		errs = append(errs, fmt.Errorf("BreakerThreshold %d is negative", c.BreakerThreshold))
	}
	if c.BreakerCooldown < 0 {
		errs = append(errs, fmt.Errorf("BreakerCooldown %v is negative", c.BreakerCooldown))
	}
	return errors.Join(errs...)
}

func (c *Config) maxSessions() int {
	if c.MaxSessions > 0 {
		return c.MaxSessions
	}
	return min(2*runtime.GOMAXPROCS(0), DefaultMaxSessionsCap)
}

// tokenName names the selected token in logs, errors and the metrics' token
// label: the label, else the serial, else the slot.
func (c *Config) tokenName() string {
	switch {
	case c.TokenLabel != "":
		return c.TokenLabel
	case c.TokenSerial != "":
		return "serial:" + c.TokenSerial
	case c.SlotID != nil:
		return fmt.Sprintf("slot:%d", *c.SlotID)
	}
	return ""
}

// LogValue implements slog.LogValuer; the PIN is never part of it.
func (c Config) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("module", c.ModulePath),
		slog.String("token", c.tokenName()),
		slog.Int("max_sessions", c.maxSessions()),
	}
	return slog.GroupValue(attrs...)
}

// String describes c without the PIN.
func (c Config) String() string {
	return fmt.Sprintf("pkcs11.Config{module=%s token=%s}", c.ModulePath, c.tokenName())
}
