// Package backendtest is the conformance suite every keybroker backend
// passes, run against softkms, PKCS#11 on SoftHSM2, and the AWS and GCP
// backends on their wire fakes (subpackages awsfake and gcpfake).
//
// A backend package calls Run from its own tests with a function that opens
// a fresh backend and names its test keys:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) *backendtest.Fixture { ... })
//	}
package backendtest

import (
	"testing"

	"github.com/keybroker/keybroker/backends"
)

// Fixture is one opened backend and the keys the suite may use. Key fields
// left empty skip the tests that need them; a field is only left empty when
// the backend cannot hold such a key, and the capability checks catch a
// backend that claims more than its fixture exercises.
type Fixture struct {
	// Backend is the backend under test. Run closes it at the end.
	Backend backends.Backend
	// AES and AES2 are two distinct aes-256 keys.
	AES, AES2 string
	// HMAC and HMAC2 are two distinct hmac-256 keys (when Caps.MAC).
	HMAC, HMAC2 string
	// ECDSA is an ecdsa-p256 key (when Caps.Sign).
	ECDSA string
	// Ed25519 is an ed25519 key, if the backend has them.
	Ed25519 string
	// Disabled is a disabled aes-256 key, if the backend has a notion of it.
	Disabled string
	// Unknown is a well-formed name of a key that does not exist.
	Unknown string
	// Caps is the expected backends.CapabilitiesOf(Backend).
	Caps backends.Capabilities
	// NewName returns a fresh, unused key name for CreateKey (when
	// Caps.Create).
	NewName func() string
}

// Run runs the conformance suite. open is called once for the main suite and
// again for tests that need a backend of their own (Close); each call must
// return an independent backend over the same keys.
//
// The suite runs on the backend as the central tier uses it: behind
// backends.Instrument, which checks arguments for every backend alike (the
// InvalidArguments tests) and must preserve the backend's optional
// interfaces exactly (the Capabilities test compares them with Caps).
func Run(t *testing.T, open func(t *testing.T) *Fixture) {
	t.Helper()
	run(t, func(t *testing.T) *Fixture {
		f := open(t)
		if f != nil && f.Backend != nil {
			f.Backend = backends.Instrument(f.Backend, backends.InstrumentOptions{Name: "conformance", Metrics: backends.NewMetrics()})
		}
		return f
	})
}
