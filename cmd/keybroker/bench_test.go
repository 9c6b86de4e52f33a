package main

import (
	"strings"
	"testing"
)

func TestBenchUsage(t *testing.T) {
	env := map[string]string{envAddr: "127.0.0.1:1", envCA: "ca", envCert: "c", envKey: "k"}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--op", "encrypt"}, exitUsage, "--op encrypt needs --key"},
		{[]string{"--op", "frobnicate", "--key", "k"}, exitUsage, `"frobnicate" is not an operation`},
		{[]string{"--op", "encrypt:0", "--key", "k"}, exitUsage, "weight of encrypt"},
		{[]string{"--op", "encrypt,encrypt", "--key", "k"}, exitUsage, "given twice"},
		{[]string{"--key", "k", "-c", "0"}, exitUsage, "--concurrency"},
		{[]string{"--key", "k", "-c", "2", "--connections", "3"}, exitUsage, "--connections"},
		{[]string{"--key", "k", "--duration", "0"}, exitUsage, "needs --count"},
		{[]string{"--key", "k", "--batch", "101", "--op", "batch-encrypt"}, exitUsage, "--batch"},
		{[]string{"--key", "k", "--metrics", "https://x/metrics"}, exitUsage, "need --interval"},
		{[]string{"--key", "k", "--interval", "1s", "--metrics", "x:1/metrics"}, exitUsage, "not an http(s) URL"},
		{[]string{"--key", "k", "--size", "5MiB"}, exitInvalid, "encrypt takes at most 4 MiB"},
		{[]string{"--op", "mac", "--key", "k", "--size", "65KiB"}, exitInvalid, "at most 64 KiB"},
		{[]string{"--op", "batch-encrypt", "--key", "k", "--size", "1MiB", "--batch", "5"}, exitInvalid, "over a request's 4 MiB"},
		{[]string{"--key", "k", "--size", "12parsecs"}, exitUsage, "unit must be"},
		{[]string{"--key", "k", "--size", "-1"}, exitUsage, "not a size"},
		{[]string{"--key", "k", "--compare-noop", "--rounds", "0"}, exitUsage, "--rounds"},
	} {
		r := runCLI(t, env, nil, append([]string{"bench"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("bench %s: exit %d %q; want %d and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.code, tc.msg)
		}
	}
}

func TestSizeValue(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "64": 64, "64B": 64, "1KiB": 1024, "1k": 1024, "4MiB": 4 << 20, "2m": 2 << 20} {
		var v sizeValue
		if err := v.Set(in); err != nil || int(v) != want {
			t.Errorf("size %q = %d, %v; want %d", in, v, err, want)
		}
	}
}
