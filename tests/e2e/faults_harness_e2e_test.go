package e2e

// The fault-injection suite (TestFault*, the faults_*_e2e_test.go files):
// real keybroker processes, a fault injected under load, and a count of
// what the application lost — which must be nothing. This file holds what
// the cases share: the report, polling with a deadline, a loopback TCP
// proxy that can cut or stall the network, and a load generator.
//
// `make test-faults` runs the suite with KEYBROKER_FAULT_REPORT naming a
// file; each case appends one line saying what was tried and what was
// lost. docs/reliability.md is written from those lines.

import (
	"bytes"
	"context"
	"fmt"
	"sync"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/tests/framework"
)

// faultMsg is a ciphertext the application holds, with what opens it.
type faultMsg struct {
	key        string
	ciphertext []byte
	plaintext  []byte
	ectx       map[string]string
}

// faultMsgs collects ciphertexts from concurrent workers.
type faultMsgs struct {
	mu   sync.Mutex
	msgs []faultMsg
}

func (m *faultMsgs) add(s faultMsg) {
	m.mu.Lock()
	m.msgs = append(m.msgs, s)
	m.mu.Unlock()
}

func (m *faultMsgs) all() []faultMsg {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]faultMsg(nil), m.msgs...)
}

// faultDecryptAll opens every message at a node with BatchDecrypt and
// returns the errors (a wrong plaintext is one).
func faultDecryptAll(ctx context.Context, node *framework.Conn, msgs []faultMsg) []error {
	var errs []error
	for len(msgs) > 0 {
		n := min(len(msgs), 200)
		req := &kbv1.BatchDecryptRequest{}
		for _, m := range msgs[:n] {
			req.Items = append(req.Items, &kbv1.DecryptRequest{Ciphertext: m.ciphertext, EncryptionContext: m.ectx})
		}
		resp, err := node.KB.BatchDecrypt(ctx, req)
		if err != nil {
			return append(errs, fmt.Errorf("BatchDecrypt of %d: %w", n, err))
		}
		for i, r := range resp.GetResults() {
			switch {
			case r.GetError() != nil:
				errs = append(errs, fmt.Errorf("%s: %v", msgs[i].key, r.GetError()))
			case !bytes.Equal(r.GetResponse().GetPlaintext(), msgs[i].plaintext):
				errs = append(errs, fmt.Errorf("%s: plaintext %q, want %q", msgs[i].key, r.GetResponse().GetPlaintext(), msgs[i].plaintext))
			}
		}
		if len(resp.GetResults()) != n {
			errs = append(errs, fmt.Errorf("BatchDecrypt of %d gave %d results", n, len(resp.GetResults())))
		}
		msgs = msgs[n:]
	}
	return errs
}

// faultRoundTrip encrypts at one node and decrypts at another, checking
// the plaintext, and returns the ciphertext.
func faultRoundTrip(ctx context.Context, enc, dec *framework.Conn, key string, pt []byte, ectx map[string]string) ([]byte, error) {
	e, err := enc.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: ectx})
	if err != nil {
		return nil, fmt.Errorf("Encrypt %s: %w", key, err)
	}
	d, err := dec.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: e.GetCiphertext(), EncryptionContext: ectx})
	if err != nil {
		return nil, fmt.Errorf("Decrypt %s: %w", key, err)
	}
	if !bytes.Equal(d.GetPlaintext(), pt) {
		return nil, fmt.Errorf("Decrypt %s = %q, want %q", key, d.GetPlaintext(), pt)
	}
	return e.GetCiphertext(), nil
}
