// Package scenarios holds keybroker's scenario benchmarks: measurements of
// whole-cluster behaviour that no single package owns, run against real
// nodes — a central node and edges started in the benchmark process by
// package devcluster, each a gRPC server with mutual TLS on loopback, each
// edge following the central tier over its own Watch stream. The package
// has no code of its own; everything is in its _test.go files.
//
// # What is measured
//
//   - BenchmarkPropagation: how long after an admin's RotateKey or
//     DisableKey returns at the central tier every one of 10 or 50 edges
//     serves the change to a client: p50, p99 and the maximum over every
//     (edge, trial) pair, as the custom metrics p50-ms, p99-ms and max-ms,
//     with the edges' own applied revision alongside (applied-p50-ms...).
//   - BenchmarkColdMiss: N concurrent cold requests (N = 1, 64, 1000) for
//     one key's material at an edge that does not prefetch, and the
//     FetchMaterial calls to the central tier and root-of-trust calls they
//     cost (metrics fetches and backend-calls, per burst).
//   - BenchmarkPropagationCentrals, BenchmarkMissThroughput,
//     BenchmarkCreateKeyStore: the central tier as a cluster — propagation
//     to 50 edges with one central node (bbolt, etcd) and three on etcd;
//     misses (FetchMaterial, forwarded Sign) a second with one, two and
//     three central nodes, with the CPU per op of this process and of the
//     etcd member; CreateKey from 8 admins on bbolt against etcd. The etcd
//     variants run one etcd member from the etcd binary and skip without
//     it.
//   - BenchmarkScale: one central node and one edge grown to N keys
//     (KEYBROKER_SCALE_KEYS, default 10,000; make bench-scale runs a
//     million) on bbolt and on etcd, by 8 admins; per decade of keys
//     present, creates/s, the edge's lag, CPU per create, live heap per
//     key and LookupKey/Encrypt p99 at the edge while creating; then
//     restart to ready and a new edge's full synchronisation. make test
//     runs it once, small, without -race.
//
// The raw-SDK ceilings of the AWS and GCP backends live next to those
// backends (backends/awskms and backends/gcpkms, bench_raw_test.go), and
// the edge and PKCS#11 scenarios in edge/ and backends/pkcs11/; `make
// bench-scenarios` runs them all, and docs/benchmarks.md gives the figures
// with the commands that produced them.
//
// # Noise
//
// Client, central node and edges share the machine's cores, so every
// figure includes the client's own work and whatever else the machine is
// doing. The benchmarks assert nothing about time; run them with -count
// and compare medians.
package scenarios
