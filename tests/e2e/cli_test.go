package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The CLI's exit codes, its contract with scripts (keybroker --help).
const (
	exitFailure      = 1
	exitUsage        = 2
	exitNotFound     = 4
	exitUnavailable  = 5
	exitInvalid      = 6
	exitVerifyFailed = 7
	exitTLS          = 8
	exitTruncated    = 9
)

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// keyJSON is a key in the CLI's --output json.
type keyJSON struct {
	KeyID                string            `json:"key_id"`
	Type                 string            `json:"type"`
	Mode                 string            `json:"mode"`
	Derived              bool              `json:"derived"`
	State                string            `json:"state"`
	PrimaryVersion       uint32            `json:"primary_version"`
	MinDecryptionVersion uint32            `json:"min_decryption_version"`
	Labels               map[string]string `json:"labels"`
	RootKey              string            `json:"root_key"`
	CreatedAt            *time.Time        `json:"created_at"`
	Revision             uint64            `json:"revision"`
	Placement            string            `json:"placement"`
}

type keyListJSON struct {
	Keys []keyJSON `json:"keys"`
}

// lookupJSON is a node in `keybroker lookup --output json`.
type lookupJSON struct {
	NodeID  string `json:"node_id"`
	Address string `json:"address"`
	Kind    string `json:"kind"`
	Region  string `json:"region,omitempty"`
	Reason  string `json:"reason"`
}

// nodeJSON is a node in `keybroker nodes --output json`.
type nodeJSON struct {
	NodeID          string            `json:"node_id"`
	Kind            string            `json:"kind"`
	Address         string            `json:"address"`
	Region          string            `json:"region,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Enrolled        bool              `json:"enrolled"`
	Connected       bool              `json:"connected"`
	Prefetch        bool              `json:"prefetch,omitempty"`
	AppliedRevision uint64            `json:"applied_revision,omitempty"`
}
