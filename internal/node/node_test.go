package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/config"
)

// A start that fails half-way closes the node's own resources and what
// the shell opened, once, however often Close is called.
func TestCloseHalfOpened(t *testing.T) {
	s := New("edge", nil)
	if _, err := s.Listen(config.Node{Listen: "127.0.0.1:0", OpsListen: "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	own := 0
	closeOwn := func() error { own++; return errors.New("own") }
	if err := s.Close(closeOwn); err == nil || err.Error() != "own" {
		t.Errorf("Close = %v, want the node's own error", err)
	}
	if err := s.Close(closeOwn); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if own != 1 {
		t.Errorf("closeOwn ran %d times, want 1", own)
	}
	// The listener is closed: its port can be bound again.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the closed shell's address: %v", err)
	}
	l.Close()
}

func TestListen(t *testing.T) {
	t.Run("advertise defaults to the bound address", func(t *testing.T) {
		s := New("central", nil)
		defer s.Close(nil)
		got, err := s.Listen(config.Node{Listen: "127.0.0.1:0", OpsListen: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		if got != s.Addr() || strings.HasSuffix(got, ":0") {
			t.Errorf("advertise = %q, want the bound %q", got, s.Addr())
		}
	})
	t.Run("advertise_address wins", func(t *testing.T) {
		s := New("central", nil)
		defer s.Close(nil)
		got, err := s.Listen(config.Node{Listen: "127.0.0.1:0", OpsListen: "127.0.0.1:0", AdvertiseAddress: "kb.example:443"})
		if err != nil || got != "kb.example:443" {
			t.Errorf("advertise = %q, %v, want kb.example:443", got, err)
		}
	})
	t.Run("errors name the field and the node", func(t *testing.T) {
		s := New("edge", nil)
		defer s.Close(nil)
		_, err := s.Listen(config.Node{Listen: "127.0.0.1:0", OpsListen: "256.0.0.1:1"})
		if err == nil || !strings.HasPrefix(err.Error(), "edge: ops_listen: ") {
			t.Errorf("Listen with a bad ops_listen = %v, want an edge: ops_listen: error", err)
		}
	})
}

func TestOpenAuditMissingHeadKey(t *testing.T) {
	s := New("central", nil)
	defer s.Close(nil)
	dir := t.TempDir()
	err := s.OpenAudit(config.Node{Audit: config.Audit{Path: dir + "/audit.jsonl", FlushInterval: 100 * time.Millisecond, HeadKeyFile: dir + "/missing"}})
	if err == nil {
		t.Fatal("OpenAudit with a missing head key file succeeded")
	}
	if s.Audit() != nil {
		t.Error("an audit log was opened without its head key")
	}
}

type fakeNode struct {
	done     chan error
	shutdown chan shutdownCall
	err      error
}

// shutdownCall is what Shutdown's context was when it was called.
type shutdownCall struct {
	err         error
	hasDeadline bool
}

func (f *fakeNode) Done() <-chan error { return f.done }
func (f *fakeNode) Shutdown(ctx context.Context) error {
	_, ok := ctx.Deadline()
	f.shutdown <- shutdownCall{ctx.Err(), ok}
	return f.err
}

func TestRun(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Run("context ends", func(t *testing.T) {
		f := &fakeNode{done: make(chan error), shutdown: make(chan shutdownCall, 1)}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := Run(ctx, f, func() {}, time.Minute, log); err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		call := <-f.shutdown
		if call.err != nil {
			t.Error("Shutdown's context ended with Run's: the node had no time to stop")
		}
		if !call.hasDeadline {
			t.Error("Shutdown's context has no deadline")
		}
	})
	t.Run("server stops on its own", func(t *testing.T) {
		f := &fakeNode{done: make(chan error, 1), shutdown: make(chan shutdownCall, 1)}
		f.done <- errors.New("accept failed")
		err := Run(t.Context(), f, func() {}, time.Minute, log)
		if err == nil || err.Error() != "server stopped: accept failed" {
			t.Errorf("Run = %v, want server stopped: accept failed", err)
		}
		<-f.shutdown
	})
	t.Run("shutdown fails", func(t *testing.T) {
		f := &fakeNode{done: make(chan error), shutdown: make(chan shutdownCall, 1), err: errors.New("audit flush")}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := Run(ctx, f, func() {}, time.Minute, log); err == nil || err.Error() != "audit flush" {
			t.Errorf("Run = %v, want audit flush", err)
		}
	})
}

// MakeDataDir makes data_dir 0700 with its parents and says which it
// made, innermost first; a data_dir that exists is not its to take back.
func TestMakeDataDir(t *testing.T) {
	s := New("edge", nil)
	defer s.Close(nil)
	root := t.TempDir()
	dir := filepath.Join(root, "a", "b")
	made, err := s.MakeDataDir(config.Node{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{dir, filepath.Join(root, "a")}; !slices.Equal(made, want) {
		t.Errorf("MakeDataDir made %q, want %q", made, want)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("data_dir: %v, %v; want a 0700 directory", st, err)
	}
	if made, err := s.MakeDataDir(config.Node{DataDir: dir}); err != nil || len(made) != 0 {
		t.Errorf("MakeDataDir on an existing data_dir = %q, %v; want nothing made", made, err)
	}
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MakeDataDir(config.Node{DataDir: filepath.Join(file, "sub")}); err == nil || !strings.Contains(err.Error(), "edge: data_dir: ") {
		t.Errorf("MakeDataDir under a file: err = %v, want one naming edge: data_dir", err)
	}
}

// TestOpenAuditReportsChain: the shell reports the background verification
// of the audit chain in its metrics, /readyz's checks and the log itself,
// for an intact log and for one edited in the middle, which it still opens.
func TestOpenAuditReportsChain(t *testing.T) {
	for _, tc := range []struct {
		name             string
		edit             bool
		verified, broken float64
		ready, outcome   string
	}{
		{"intact", false, 1, 0, "verified, 30 lines", "ok"},
		{"edited in the middle", true, 0, 1, "BROKEN: line 5: hash mismatch", "broken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			l, err := audit.Open(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 30 {
				if err := l.Append(audit.Record{Operation: "Encrypt", Key: fmt.Sprintf("k%d", i), Outcome: "ok"}); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if tc.edit {
				data, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, bytes.Replace(data, []byte(`"k4"`), []byte(`"k9"`), 1), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s := New("central", nil)
			if err := s.OpenAudit(config.Node{NodeID: "central-1", Audit: config.Audit{Path: path}}); err != nil {
				t.Fatalf("OpenAudit = %v", err)
			}
			select {
			case <-s.Audit().CheckDone():
			case <-time.After(time.Minute):
				t.Fatal("the background verification did not end within a minute")
			}
			got := map[string]float64{}
			mfs, err := s.Metrics().Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if strings.HasPrefix(mf.GetName(), "keybroker_audit_") {
					got[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
				}
			}
			if got["keybroker_audit_chain_verified"] != tc.verified || got["keybroker_audit_chain_broken"] != tc.broken {
				t.Errorf("metrics %v, want verified %v and broken %v", got, tc.verified, tc.broken)
			}
			if _, ok := got["keybroker_audit_verify_seconds"]; !ok {
				t.Errorf("metrics %v lack keybroker_audit_verify_seconds", got)
			}
			checks := map[string]any{}
			s.auditReady(checks)
			if c, _ := checks["audit_chain"].(string); !strings.HasPrefix(c, tc.ready) {
				t.Errorf("/readyz audit_chain = %q, want it to begin %q", c, tc.ready)
			}
			if err := s.Close(nil); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
			var last audit.Record
			if err := json.Unmarshal(lines[len(lines)-1], &last); err != nil {
				t.Fatal(err)
			}
			if len(lines) != 31 || last.Operation != "VerifyAuditChain" || last.Outcome != tc.outcome || last.Node != "central-1" || last.Principal != "system" {
				t.Errorf("%d lines, the last %+v; want 31, the last a VerifyAuditChain by system at central-1 with outcome %s", len(lines), last, tc.outcome)
			}
		})
	}
}

// TestFrontMetrics: a front-end's answers are counted by status — the
// status written, 200 for a body without one, 200 for nothing at all — and
// timed, under the front's name.
func TestFrontMetrics(t *testing.T) {
	s := New("central", nil)
	h := s.frontMetrics("aws_kms", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bad":
			w.WriteHeader(http.StatusBadRequest)
			w.WriteHeader(http.StatusInternalServerError) // ignored by net/http, and here
			w.Write([]byte("no"))
		case "/ok":
			w.Write([]byte("yes"))
		}
	}))
	for _, path := range []string{"/bad", "/bad", "/ok", "/empty"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, path, nil))
	}
	families, err := s.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := ""
			for _, l := range m.GetLabel() {
				labels += l.GetName() + "=" + l.GetValue() + " "
			}
			switch f.GetName() {
			case "keybroker_front_requests_total":
				got[f.GetName()+" "+labels] = m.GetCounter().GetValue()
			case "keybroker_front_request_seconds":
				got[f.GetName()+" "+labels] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"keybroker_front_requests_total code=400 front=aws_kms ": 2,
		"keybroker_front_requests_total code=200 front=aws_kms ": 2,
		"keybroker_front_request_seconds front=aws_kms ":         4,
	}
	if !maps.Equal(got, want) {
		t.Errorf("front metrics = %v, want %v", got, want)
	}
}
