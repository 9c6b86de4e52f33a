package rpc_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/rpc"
)

// families gathers reg by metric name.
func families(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather = %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

func TestMetricsInterceptor(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := rpc.NewMetrics(reg)
	const (
		encrypt = "/keybroker.v1.KeyBroker/Encrypt"
		decrypt = "/keybroker.v1.KeyBroker/Decrypt"
	)
	plain := errors.New("not a status")
	calls := []struct {
		method string
		err    error
	}{
		{encrypt, nil},
		{encrypt, nil},
		{encrypt, status.Error(codes.PermissionDenied, "no")},
		{decrypt, status.Error(codes.InvalidArgument, "bad ciphertext")},
		{decrypt, status.Error(codes.InvalidArgument, "bad context")},
		{decrypt, plain},
	}
	for i, c := range calls {
		want := i
		resp, err := m.Interceptor(t.Context(), "req", &grpc.UnaryServerInfo{FullMethod: c.method}, func(_ context.Context, req any) (any, error) {
			if req != "req" {
				t.Errorf("handler got request %v, want req", req)
			}
			return want, c.err
		})
		if resp != want || err != c.err {
			t.Errorf("Interceptor = %v, %v; want the handler's %v, %v", resp, err, want, c.err)
		}
	}

	fams := families(t, reg)
	type key struct{ method, code string }
	got := map[key]float64{}
	for _, mt := range fams["keybroker_grpc_requests_total"].GetMetric() {
		l := labelsOf(mt)
		if len(l) != 2 {
			t.Errorf("requests_total labels = %v, want method and code", l)
		}
		got[key{l["method"], l["code"]}] = mt.GetCounter().GetValue()
	}
	want := map[key]float64{
		{encrypt, "OK"}:               2,
		{encrypt, "PermissionDenied"}: 1,
		{decrypt, "InvalidArgument"}:  2,
		{decrypt, "Unknown"}:          1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("keybroker_grpc_requests_total mismatch (-want +got):\n%s", diff)
	}

	counts := map[string]uint64{}
	for _, mt := range fams["keybroker_grpc_request_duration_seconds"].GetMetric() {
		l := labelsOf(mt)
		if len(l) != 1 {
			t.Errorf("request_duration_seconds labels = %v, want method only", l)
		}
		counts[l["method"]] = mt.GetHistogram().GetSampleCount()
		if s := mt.GetHistogram().GetSampleSum(); s < 0 {
			t.Errorf("request_duration_seconds{method=%q} sum = %v, want >= 0", l["method"], s)
		}
	}
	if diff := cmp.Diff(map[string]uint64{encrypt: 3, decrypt: 3}, counts); diff != "" {
		t.Errorf("keybroker_grpc_request_duration_seconds counts mismatch (-want +got):\n%s", diff)
	}
}

// TestMetricsRegistries: metrics belong to the registry they are given, so
// two servers in one process (as in tests) do not collide.
func TestMetricsRegistries(t *testing.T) {
	a, b := prometheus.NewRegistry(), prometheus.NewRegistry()
	ma, _ := rpc.NewMetrics(a), rpc.NewMetrics(b)
	info := &grpc.UnaryServerInfo{FullMethod: "/keybroker.v1.KeyBroker/Sign"}
	if _, err := ma.Interceptor(t.Context(), nil, info, func(context.Context, any) (any, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	if n := len(families(t, b)["keybroker_grpc_requests_total"].GetMetric()); n != 0 {
		t.Errorf("a call counted in registry a shows %d series in registry b, want 0", n)
	}
	if n := len(families(t, a)["keybroker_grpc_requests_total"].GetMetric()); n != 1 {
		t.Errorf("registry a has %d series, want 1", n)
	}
}
