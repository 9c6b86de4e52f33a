// Package framework is keybroker's cluster test framework, in the spirit of
// etcd's tests/framework: a scenario is written once against the Cluster
// interface and run against two implementations of it, so that what the
// in-process cluster users test with and the binaries they deploy are held
// to the same behaviour.
//
// It lives under tests/ because it is for tests only: it builds the
// keybroker binary, writes certificates and keys in the test's temporary
// directory, and fails the test instead of returning errors. Nothing
// outside tests/ imports it but integration/kubernetes, a test module of
// its own that starts `keybroker kms-plugin` with StartNode. (Users' own
// integration tests use package keybrokertest, which is public and
// stable; this package is neither.)
//
// # Two implementations
//
//   - InProcess (StartInProcess) is a keybrokertest cluster: the central
//     node and the edges run as goroutines of the test binary, each a real
//     gRPC server with mutual TLS on a loopback port.
//   - Processes (StartProcesses, NewProcesses, NewProcessesOn) runs real
//     `keybroker central` and `keybroker edge` processes from
//     configuration files written for them, with real certificates, gRPC
//     over mutual TLS and their state on disk. Central listens on a fixed
//     port so that a restarted central is found again by its edges.
//
// [Run] runs a scenario both ways as the subtests "in-process" and
// "processes". Both clusters enforce [Policy] on roots of trust of the same
// kind (softkms, or SoftHSM2 with Options.SoftHSM); nodes are named
// [CentralNode] and the edges' names.
//
// [StartDev] runs `keybroker dev` itself, as a user would, for the tests of
// its summary, env file and the tour the README gives.
//
// # Process control and faults
//
// Processes also satisfies [Controller]: a node can be stopped (SIGTERM),
// killed (SIGKILL) and started again from its configuration and data
// directory. A scenario that needs it asserts the interface and skips
// in-process. The fault suite (TestFault* in tests/e2e) uses the process
// implementation directly, with a [Proxy] between an edge and central
// (EdgeNode.Via) to cut or stall the network, a [Load] of workers counting
// what the application lost, and a [FaultReport] line per case.
//
// # A central tier on etcd
//
// [Tier] (StartTier, or NewTier then Start) runs several central
// processes — three by default, central-1, central-2, … each with its own
// certificate, data directory, audit log and fixed port — on one registry
// in a real etcd cluster of three members (internal/etcdtest), and edges
// given every central's address (central.addresses), each edge's list
// rotated by one so that edges spread over the centrals. Tier.SDK makes
// SDK clients configured with every edge and every central. A central is
// killed and restarted like any process; the etcd member that leads is
// found by its Status (Tier.EtcdLeader) and killed with SIGKILL; the
// central elected to sweep is read from the election (Tier.SweepLeader);
// a central named in TierOptions.Linked reaches etcd through an
// [EtcdLink], one [Proxy] per member, that cuts it off from etcd alone
// and heals; Tier.MakeDue moves keys' next rotation into the past in the
// store, the only way a test lets a rotation period of a day pass. Which
// central an edge follows is read from every live central's ListNodes
// (Tier.Following). The TestFaultCluster* cases use it.
//
// # AWS front-ends
//
// [StartAWSFront] runs a central process serving the AWS KMS API and the
// XKS proxy API over HTTPS, with a key [DemoKeyID] and an access key made
// by the CLI, for the tests of real AWS tools: the AWS CLI (tests/e2e),
// keybroker bench --protocol awsjson|xks, and the AWS Encryption SDK in
// the separate module integration/awsesdk, which imports this package
// through a replace directive. [KMSClient] (the AWS SDK's KMS client),
// [XKSPoster] (requests signed as AWS KMS signs them for an XKS proxy) and
// Processes.AWSHTTPClient (trusting the cluster's CA) talk to any node's
// AWS front-ends, edges' included.
//
// # The binary
//
// [Main], called from a test package's TestMain, builds the keybroker
// binary — in keybroker's own module, with its go.mod, even for another
// module's tests — once per test binary — with -race when the tests are race-built,
// so the processes are checked too — and removes it at the end. [CLI]
// runs it with only the KEYBROKER_* variables a test gives, as a user's
// shell would; both implementations run the CLI that way. The processes'
// environment ([ProcessEnv]) turns off the race detector's one-second
// sleep at exit, which would otherwise cost a second per process.
//
// # Waiting
//
// Nothing here sleeps to let something happen. Waits are for a state — a
// log line ([Proc.WaitLog]), every edge acknowledging a revision
// ([Processes.WaitApplied]), a condition ([Poll]) — bounded by a deadline
// ([ApplyWait], [FaultWait]) that turns a hang into a failure with the
// evidence (the nodes' logs), never a measurement.
package framework
