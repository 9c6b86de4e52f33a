package devcluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/central"
)

// RootKey is a root key of the cluster's central node, in its root of
// trust.
type RootKey struct {
	// Role is the key's one role in central.yaml's root_keys: "derive"
	// or "wrap" (also the mode's default_root_keys entry), or "backend"
	// for a key kept for backend-mode keys that name it.
	Role string
	// Algorithm is the key's algorithm in the backend.
	Algorithm backends.Algorithm
	// Name is the key's name inside the backend, as Backend methods take it
	// (a softkms name, a PKCS#11 label, an AWS alias, a GCP CryptoKey or
	// CryptoKeyVersion).
	Name string
	// URI is the shortest key URI that names the key in the configured
	// backend: what default_root_keys and the registry hold, so that a
	// PIN file or module moved elsewhere leaves existing keys usable.
	URI string
	// CreateURI is the full key URI `keybroker root create` takes.
	CreateURI string

	// create is the name CreateKey takes (a GCP CryptoKey id).
	create string
}

// Root key base names. The pkcs11 and softkms ones are the labels the
// README's set-up by hand uses, so a token prepared that way serves the
// development cluster as it is.
const (
	rootPRF   = "root-prf"
	rootAES   = "root-aes"
	rootECDSA = "root-ecdsa"
)

// awsAliasPrefix keeps the development cluster's AWS aliases apart from
// others: aliases are account- and region-wide.
const awsAliasPrefix = "alias/keybroker-dev-"

// rootKeysFor returns the root keys a cluster on backendURI needs. softkms
// (the default backend) also gets an ECDSA P-256 key, as it always has;
// any other backend needs only the derive and wrap roots.
func rootKeysFor(backendURI string) ([]RootKey, error) {
	u, err := backends.ParseKeyURI(backendURI)
	if err != nil {
		return nil, err
	}
	if u.Key() != "" {
		return nil, fmt.Errorf("devcluster: backend %s names a key (%s): give the backend alone; the cluster's root keys get their own names", backendURI, u.Key())
	}
	type base struct {
		role, name string
		alg        backends.Algorithm
	}
	bases := []base{{"derive", rootPRF, backends.HMAC256}, {"wrap", rootAES, backends.AES256}}
	if u.Scheme() == "softkms" {
		bases = append(bases, base{"backend", rootECDSA, backends.ECDSAP256})
	}
	var keys []RootKey
	for _, b := range bases {
		k := RootKey{Role: b.role, Algorithm: b.alg, Name: b.name, create: b.name}
		switch u := u.(type) {
		case *backends.SoftKMSURI:
			full := *u
			full.Name = b.name
			k.URI = (&backends.SoftKMSURI{Name: b.name}).String()
			k.CreateURI = full.String()
		case *backends.PKCS11URI:
			full := *u
			full.Object, full.ID, full.Type = b.name, nil, ""
			short := full
			short.ModulePath, short.ModuleName, short.PinSource, short.MaxSessions = "", "", "", 0
			k.URI, k.CreateURI = short.String(), full.String()
		case *backends.AWSKMSURI:
			k.Name, k.create = awsAliasPrefix+b.name, awsAliasPrefix+b.name
			full := *u
			full.KeyID = k.Name
			k.URI = (&backends.AWSKMSURI{KeyID: k.Name, Region: u.Region}).String()
			k.CreateURI = full.String()
		case *backends.GCPKMSURI:
			// Encrypt takes a CryptoKey (its primary version); MAC and
			// signing take a CryptoKeyVersion, and a new key's first
			// version is 1.
			k.Name = u.KeyRing() + "/cryptoKeys/" + b.name
			if b.alg != backends.AES256 {
				k.Name += "/cryptoKeyVersions/1"
			}
			k.URI = (&backends.GCPKMSURI{Resource: k.Name}).String()
			k.CreateURI = (&backends.GCPKMSURI{Resource: k.Name, Endpoint: u.Endpoint}).String()
		default:
			return nil, fmt.Errorf("devcluster: backend scheme %s is not supported", u.Scheme())
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// ensureRootKeys checks the root keys in the backend and creates those it
// does not have yet, when it can. A key that exists with another
// algorithm, or is disabled, is an error; so are missing keys the backend
// cannot create, with the list of what to create by hand.
func ensureRootKeys(ctx context.Context, uri string, keys []RootKey) error {
	b, err := central.Backends().Open(ctx, uri, backends.Options{})
	if err != nil {
		return fmt.Errorf("devcluster: opening the root of trust: %w", err)
	}
	defer b.Close()
	return ensureRootKeysIn(ctx, b, keys)
}

func ensureRootKeysIn(ctx context.Context, b backends.Backend, keys []RootKey) error {
	var missing []RootKey
	for _, k := range keys {
		info, err := b.Describe(ctx, k.Name)
		switch {
		case errors.Is(err, backends.ErrNotFound):
			missing = append(missing, k)
		case err != nil:
			return fmt.Errorf("devcluster: root key %s: %w", k.Name, err)
		case info.Algorithm != k.Algorithm:
			return fmt.Errorf("devcluster: root key %s is %s in the backend, not %s: remove or rename it, or use another backend", k.Name, info.Algorithm, k.Algorithm)
		case !info.Enabled:
			return fmt.Errorf("devcluster: root key %s is disabled in the backend: enable it", k.Name)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	kc, ok := b.(backends.KeyCreator)
	if !ok {
		return &MissingRootKeysError{Keys: missing, Reason: "the backend cannot create keys"}
	}
	if ca, ok := b.(backends.CreatesAlgorithms); ok {
		var cannot []RootKey
		for _, k := range missing {
			if !slices.Contains(ca.CreatableAlgorithms(), k.Algorithm) {
				cannot = append(cannot, k)
			}
		}
		if len(cannot) > 0 {
			return &MissingRootKeysError{Keys: cannot, Reason: "the backend cannot create keys of their algorithms"}
		}
	}
	for i, k := range missing {
		if _, err := kc.CreateKey(ctx, k.create, k.Algorithm); err != nil {
			return &MissingRootKeysError{Keys: missing[i:], Reason: fmt.Sprintf("creating %s failed", k.Name), Err: err}
		}
	}
	return nil
}

// MissingRootKeysError lists root keys a backend lacks and the cluster
// could not create there.
type MissingRootKeysError struct {
	Keys   []RootKey
	Reason string
	Err    error
}

func (e *MissingRootKeysError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "devcluster: the root of trust lacks root keys the cluster needs, and %s", e.Reason)
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	b.WriteString("; create these in it, then start again:")
	for _, k := range e.Keys {
		fmt.Fprintf(&b, "\n  %s (%s)", k.Name, k.Algorithm)
		if !strings.HasPrefix(k.CreateURI, "gcpkms:") {
			// keybroker root create takes a CryptoKey id for GCP, not
			// the version this list names.
			fmt.Fprintf(&b, ": keybroker root create '%s' --algorithm %s", k.CreateURI, k.Algorithm)
		}
	}
	return b.String()
}

func (e *MissingRootKeysError) Unwrap() error { return e.Err }
