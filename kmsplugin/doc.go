// Package kmsplugin is a Kubernetes KMS v2 plugin (k8s.io/kms/apis/v2
// KeyManagementService) in front of one keybroker key: the apiserver on a
// control-plane node encrypts the seeds of its secrets' data keys through
// it, and keybroker's nodes — the nearest edge first — do the work.
//
//	kms, _ := client.New(ctx, client.Config{Addrs: []string{"edge-1:7700", "central:7700"}})
//	svc, _ := kmsplugin.New(kms, kmsplugin.Config{Key: "k8s-secrets", Cluster: "prod-eu"})
//	ln, _ := kmsplugin.Listen("/var/run/kmsplugin/keybroker.sock", kmsplugin.SocketOptions{})
//	_ = svc.Serve(ctx, ln)
//
// The plugin is a client of keybroker (the Go SDK: routing by LookupKey,
// fail-over between nodes, mutual TLS or SPIFFE), not an embedded edge:
// its identity is a client principal that Cedar policy scopes to its key,
// and an edge near the node keeps serving it through a central outage.
// docs/kubernetes.md argues the choice and shows an EncryptionConfiguration.
//
// # Encrypt and Decrypt
//
// Encrypt seals the apiserver's plaintext (a 32-byte seed since Kubernetes
// 1.29) with keybroker's Encrypt under the key's primary version and an
// encryption context naming the cluster ({"kubernetes.io/cluster": NAME}),
// so a ciphertext from another cluster, or made by keybroker's Encrypt for
// any other purpose, does not open here. The ciphertext is keybroker's
// versioned format (docs/ciphertext.md): 128 bytes plus the key id's
// length for a 32-byte seed, far below the apiserver's 1 KiB. Keys in
// backend mode, whose wrapped data key is the root of trust's own
// ciphertext of up to 2 KiB, are refused. Decrypt reads the key and
// version from the ciphertext's header and uses key_id and the
// annotations only to check them: data sealed before any number of
// rotations keeps opening as long as keybroker keeps the version.
//
// # key_id
//
// key_id is base64url(SHA-256("keybroker/k8s-kms/v1" ‖ 0 ‖ key id ‖ 0 ‖
// key created_at ‖ u32 version ‖ version created_at)), the times as
// seconds and nanoseconds since the epoch. It is public, the same on every
// control-plane node and after every restart (it is computed from the
// key's replicated metadata), and changes exactly when the key's primary
// version changes. It never repeats: versions only grow, and a key deleted
// and made again under the same id has a new creation time, so A→B→A
// cannot happen. Status returns the key_id of the primary version as the
// nearest node sees it (DescribeKey, answered from an edge's replica);
// Encrypt returns the key_id of the version that actually sealed, read
// from the ciphertext's header.
//
// # Health
//
// Status answers healthz "ok" unless the key is disabled, pending
// deletion or gone, is of a type the plugin cannot use, or no node has
// answered for longer than Config.Grace (default 2 minutes). A node that
// is unavailable — an edge stale past its max_staleness refuses with
// Unavailable, as does a central tier that is down — is a transient miss
// while the last good answer is younger than Grace: Status keeps
// answering from it, and Encrypt and Decrypt go on through the SDK's
// fail-over. A check is one DescribeKey at the nearest node: metadata,
// never a root-of-trust call.
//
// # Limits
//
// Requests are checked before anything is sent: plaintext 1 to 512 bytes,
// ciphertext 1 to 1024 bytes, key_id 1 to 1024 bytes, annotation keys
// fully qualified domain names, keys and values at most 32 KiB in all.
// A violation is InvalidArgument naming the field and the limit. The one
// annotation the plugin writes is format.keybroker.dev = "1"; Decrypt
// refuses any other annotation or value.
//
// # Observability
//
// Every call is logged with the apiserver's uid, which is also sent to
// keybroker as the request id (x-request-id), so the audit lines of every
// node the call reached carry it as client_request_id. Metrics
// (Config.Registerer): keybroker_kmsplugin_requests_total{op,key_id,code},
// keybroker_kmsplugin_request_duration_seconds{op,key_id} (each observation's
// exemplar is the uid) and keybroker_kmsplugin_healthy.
//
// # Socket
//
// [Listen] removes a stale socket file (only a socket that nothing
// accepts on), makes the socket under a temporary name, sets its mode
// (0600, or 0660 with a group) and group, and only then renames it into
// place, so the apiserver never sees it with wider permissions.
//
// # Concurrency
//
// A Service is safe for concurrent use; the last key metadata read is
// shared under a mutex and read again only by Status, or when a call
// names a version it does not hold.
package kmsplugin
