// Package awsesdk tests keybroker with the AWS Encryption SDK for Go
// (github.com/aws/aws-encryption-sdk/releases/go/encryption-sdk) and its
// AWS KMS keyring, unmodified, against a real keybroker central process
// serving the AWS KMS API.
//
// It is a Go module of its own so that the Encryption SDK's dependencies
// (the Material Providers Library, the Dafny runtime, the DynamoDB client)
// stay out of keybroker's go.mod; a replace directive builds it against
// the keybroker source around it. Minimal version selection gives both
// modules the same aws-sdk-go-v2 (keybroker's pins are newer than the
// SDK's requirements), so the SDK is tested with the AWS SDK keybroker
// ships. `make test` runs it (make test-integration).
package awsesdk

import (
	"testing"

	"github.com/keybroker/keybroker/tests/framework"
)

func TestMain(m *testing.M) { framework.Main(m) }
