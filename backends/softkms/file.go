package softkms

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/keybroker/keybroker/backends"
)

const (
	formatV1    = "keybroker-softkms/v1"
	kdfNone     = "none"
	kdfArgon2id = "argon2id"
)

var (
	checkValue = []byte("keybroker softkms key-encryption key check")
	checkAAD   = []byte(formatV1 + "\x00check")
)

// fileFormat is the keystore document. Secrets appear only sealed.
type fileFormat struct {
	Format string     `json:"format"`
	KDF    kdfHeader  `json:"kdf"`
	Check  []byte     `json:"check"`
	Keys   []keyEntry `json:"keys"`
}

type kdfHeader struct {
	Name   string    `json:"name"`
	Salt   []byte    `json:"salt,omitempty"`
	Params KDFParams `json:"params,omitzero"`
}

func (k kdfHeader) describe() string {
	if k.Name == kdfArgon2id {
		return "a passphrase"
	}
	return "a KEK file"
}

type keyEntry struct {
	Name      string             `json:"name"`
	Algorithm backends.Algorithm `json:"algorithm"`
	Enabled   bool               `json:"enabled"`
	Created   time.Time          `json:"created"`
	Sealed    []byte             `json:"sealed"`
}

func (f fileFormat) encode() ([]byte, error) {
	return json.MarshalIndent(f, "", "  ")
}

func decodeFile(data []byte) (fileFormat, error) {
	var f fileFormat
	if err := json.Unmarshal(data, &f); err != nil {
		return f, fmt.Errorf("not a softkms keystore: %w", err)
	}
	if f.Format != formatV1 {
		return f, fmt.Errorf("format %q is not %q", f.Format, formatV1)
	}
	switch f.KDF.Name {
	case kdfNone:
	case kdfArgon2id:
		p := f.KDF.Params
		if len(f.KDF.Salt) < 16 || p.Time < 1 || p.Memory < 8 || p.Threads < 1 || p.Memory > 4<<20 || p.Time > 100 {
			return f, errors.New("argon2id parameters out of range")
		}
	default:
		return f, fmt.Errorf("unknown KDF %q", f.KDF.Name)
	}
	seen := map[string]bool{}
	for _, k := range f.Keys {
		if seen[k.Name] {
			return f, fmt.Errorf("key %q appears twice", k.Name)
		}
		seen[k.Name] = true
	}
	return f, nil
}

func argon2id(pass []byte, h kdfHeader) []byte {
	p := h.Params
	return argon2.IDKey(pass, h.Salt, p.Time, p.Memory, p.Threads, 32)
}
