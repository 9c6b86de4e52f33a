package main

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestBenchAWSUsage(t *testing.T) {
	env := map[string]string{envAddr: "127.0.0.1:1", envCA: "ca", envCert: "c", envKey: "k",
		envAWSAccessKeyID: "AKIAEXAMPLE", envAWSSecretAccessKey: "secret", envAWSRegion: "eu-west-1"}
	kms := []string{"--protocol", "awsjson", "--endpoint", "https://127.0.0.1:1", "--key", "k"}
	xks := []string{"--protocol", "xks", "--endpoint", "https://127.0.0.1:1/kb", "--key", "k"}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		msg  string
	}{
		{[]string{"--protocol", "smtp", "--key", "k"}, nil, "--protocol must be grpc, awsjson or xks"},
		{append(kms, "--op", "sign"), nil, "--op sign is not one of its operations"},
		{append(kms, "--op", "create"), nil, "--op create is not one of its operations"},
		{append(kms, "--compare-noop"), nil, "leave out --compare-noop"},
		{append(kms, "--interval", "1s"), nil, "leave out --interval"},
		{[]string{"--protocol", "awsjson", "--key", "k"}, nil, "needs --endpoint"},
		{[]string{"--protocol", "awsjson", "--endpoint", "http://127.0.0.1:1", "--key", "k"}, nil, "needs --endpoint"},
		{kms, map[string]string{envAWSRegion: ""}, "needs --region"},
		{kms, map[string]string{envAWSSecretAccessKey: ""}, "AWS_SECRET_ACCESS_KEY"},
		{append(kms, "--ca", "/nonexistent/ca.pem"), nil, "--ca"},
		{append(xks, "--op", "encrypt,decrypt"), nil, "one operation at a fixed rate"},
		{append(xks, "--op", "datakey"), nil, "--op datakey is not one of its operations"},
		{append(xks, "--rate", "0"), nil, "--rate must be above 0"},
		{append(xks, "--count", "10"), nil, "leave out --count"},
		{append(xks, "--metrics", "https://127.0.0.1:1/metrics"), nil, "leave out --metrics"},
		{append(kms, "--metrics", "127.0.0.1:1"), nil, "is not an http(s) URL"},
		{append(xks, "--duration", "0"), nil, "needs a --duration"},
		{[]string{"--protocol", "xks", "--key", "k", "--endpoint", "https://127.0.0.1:1/kb", "--size", "5MiB"}, nil, "at most 4 MiB"},
	} {
		e := map[string]string{}
		for k, v := range env {
			e[k] = v
		}
		for k, v := range tc.env {
			e[k] = v
		}
		r := runCLI(t, e, nil, append([]string{"bench"}, tc.args...)...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("bench %s: exit %d %q; want a failure saying %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.msg)
		}
	}
}

// TestRunAtRate: every request of the schedule is started, whatever the
// op's latency (open loop); failures are counted by code; requests that
// wait for a busy worker count as late.
func TestRunAtRate(t *testing.T) {
	var n atomic.Int64
	st, late := runAtRate(t.Context(), 1000, 200*time.Millisecond, 4, func(context.Context) error {
		if n.Add(1)%10 == 0 {
			return status.Error(codes.ResourceExhausted, "slow down")
		}
		return nil
	})
	if st.Ops+st.Failed != 200 || st.Failed != 20 || st.Errors["ResourceExhausted"] != 20 {
		t.Errorf("runAtRate(1000/s, 200ms) = %d ok, %d failed %v; want 200 started, 20 ResourceExhausted", st.Ops, st.Failed, st.Errors)
	}
	if st.Latency.P50 <= 0 || st.Latency.P50 > st.Latency.P99 {
		t.Errorf("latency %+v: missing or out of order", st.Latency)
	}
	_ = late

	// One worker, each call holding it past the next request's time.
	st, late = runAtRate(t.Context(), 1000, 20*time.Millisecond, 1, func(context.Context) error {
		time.Sleep(15 * time.Millisecond)
		return nil
	})
	if st.Ops != 20 || late == 0 {
		t.Errorf("one busy worker: %d calls, %d late; want 20, some late", st.Ops, late)
	}
}
