package awskms

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults for the Config fields left zero.
const (
	// DefaultRateLimit is the outbound request rate per backend, in requests
	// per second. AWS KMS throttles per account and region: the shared quota
	// for symmetric cryptographic operations (Encrypt, Decrypt,
	// GenerateDataKey, GenerateMac, VerifyMac, GenerateRandom) is 5,500
	// requests per second in the smallest regions (10,000 or 50,000 in
	// others), and asymmetric ECC operations (Sign) share a much smaller
	// quota, 300 per second in the smallest regions
	// (https://docs.aws.amazon.com/kms/latest/developerguide/requests-per-second.html).
	// Every other client in the account draws from the same quotas, so one
	// keybroker node takes under a tenth of the smallest symmetric one.
	DefaultRateLimit = 500
	// DefaultBurst is the token-bucket depth: a tenth of a second at
	// DefaultRateLimit.
	DefaultBurst = 50
	// DefaultMaxAttempts bounds the attempts per call, the first included.
	DefaultMaxAttempts = 5
	// DefaultMaxBackoff caps the delay between two attempts.
	DefaultMaxBackoff = time.Second
)

// HTTPClient sends the SDK's requests; *http.Client implements it.
type HTTPClient interface {
	Do(*http.Request) (*http.Response, error)
}

// Config configures a Backend. The zero value of every optional field
// selects the documented default.
type Config struct {
	// Region is the AWS region whose keys the backend uses, e.g.
	// "eu-west-1". Required: requests are signed for it.
	Region string
	// Endpoint, when set, replaces the regional service endpoint (the SDK's
	// BaseEndpoint): an http or https URL such as a VPC endpoint
	// ("https://vpce-0123-abcd.kms.eu-west-1.vpce.amazonaws.com") or a test
	// fake.
	Endpoint string
	// Credentials signs requests. Nil resolves the SDK's default chain once,
	// in New: environment variables, the shared config and credentials
	// files (AWS_PROFILE), web identity (EKS IRSA), container credentials
	// (ECS, EKS Pod Identity), and the EC2 instance role. Only credentials
	// are taken from that chain; region, endpoint and retry settings come
	// from this Config alone.
	Credentials aws.CredentialsProvider
	// RateLimit is the most requests per second the backend sends, counting
	// every attempt of every operation. Callers wait for a token under their
	// context. 0 means DefaultRateLimit; math.Inf(1) removes the limit.
	RateLimit float64
	// Burst is the token-bucket depth: how many requests may go out at once
	// after a quiet spell. 0 means DefaultBurst.
	Burst int
	// MaxAttempts bounds the attempts of one call, the first included;
	// throttling, 5xx answers and connection failures are retried. 0 means
	// DefaultMaxAttempts; 1 disables retries.
	MaxAttempts int
	// MaxBackoff caps the jittered exponential delay between attempts. 0
	// means DefaultMaxBackoff. The caller's context deadline bounds the whole
	// call whatever this is.
	MaxBackoff time.Duration
	// HTTPClient sends the requests. Nil uses the SDK's default transport
	// (its dial, TLS and idle timeouts) with a connection pool sized for
	// Burst concurrent requests.
	HTTPClient HTTPClient
	// Logger receives retry and cleanup logs; nil discards them.
	Logger *slog.Logger
	// Metrics registers the backend's metrics; nil registers none.
	Metrics prometheus.Registerer
}

var regionRe = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d$`)

// Validate checks the configuration without any I/O.
func (c Config) Validate() error {
	var errs []error
	if !regionRe.MatchString(c.Region) {
		errs = append(errs, fmt.Errorf("region %q is not an AWS region name", c.Region))
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			errs = append(errs, fmt.Errorf("endpoint %q is not an http(s) URL", c.Endpoint))
		}
	}
	if math.IsNaN(c.RateLimit) || c.RateLimit < 0 {
		errs = append(errs, fmt.Errorf("rate limit %v is not a non-negative number of requests per second", c.RateLimit))
	}
	if c.Burst < 0 {
		errs = append(errs, fmt.Errorf("burst %d is negative", c.Burst))
	}
	if c.MaxAttempts < 0 || c.MaxAttempts > 20 {
		errs = append(errs, fmt.Errorf("max attempts %d out of range 0..20", c.MaxAttempts))
	}
	if c.MaxBackoff < 0 {
		errs = append(errs, fmt.Errorf("max backoff %v is negative", c.MaxBackoff))
	}
	return errors.Join(errs...)
}

// withDefaults fills in the zero fields.
func (c Config) withDefaults() Config {
	if c.RateLimit == 0 {
		c.RateLimit = DefaultRateLimit
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
