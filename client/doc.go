// Package client is keybroker's Go SDK: every KeyBroker operation, routed
// to the node that serves each key best, and client-side envelope
// encryption that makes millions of messages cost a handful of calls.
//
//	c, err := client.New(ctx, client.Config{}) // KEYBROKER_ADDR, _CA, _CERT, _KEY
//	ct, err := c.Encrypt(ctx, "payments", []byte("hello"), nil)
//	pt, err := c.Decrypt(ctx, ct.Ciphertext, nil)
//
// # Identity
//
// The client's identity comes from one of Config.Source (an
// identity.Source of the caller's; it wins over Config.TLS), Config.TLS,
// Config.SPIFFESocket (a
// SPIFFE Workload API agent: the X.509 SVID, its key and the trust
// domain's bundle, followed as the agent rotates them; the client closes
// the source it opened), or the CAFile, CertFile and KeyFile PEM files
// (reloaded when they change). With none of them set, the environment
// names the files (KEYBROKER_CA, KEYBROKER_CERT, KEYBROKER_KEY) or the
// agent (KEYBROKER_SPIFFE_SOCKET); setting an agent and files together is
// an error. SPIFFE_ENDPOINT_SOCKET alone is not used.
//
// # Routing
//
// Config.Addrs names one or more nodes, each host:port with a port of
// 1-65535 (an IPv6 host in brackets, [::1]:7700); New refuses any other
// form, saying what is wrong, before anything is dialled. For an operation
// on a key the client asks them LookupKey — which nodes can perform this
// operation with this key now, best first: edges holding the key in the
// client's region, then in other regions, then edges that forward, then
// the central tier — and tries that list in order, followed by the
// configured nodes it does not include. The answer is cached per key and
// operation for Config.LookupTTL. A node that is unavailable (down,
// draining, stale past its max_staleness, throttling) sends the call to
// the next node and marks the answer stale; when the whole list fails, the
// client pauses (jittered, doubling from Config.Backoff to
// Config.MaxBackoff), asks again and makes another pass, up to
// Config.MaxAttempts passes and never past the caller's deadline. A node
// that may not have replicated a new key yet — it answers NotFound, or
// PermissionDenied, which is what a node says of a key it does not know
// when the policy grants keys by their labels — also passes the call on to
// the next node of the route, and the last node's answer is final: a
// caller the policy denies is told so after one call to each node. Every
// other answer — invalid, a disabled key — is final.
//
// When no node answers LookupKey the last answer is reused; when the
// policy does not allow the caller LookupKey, the configured nodes are the
// route. Config.Direct skips lookups: the configured nodes, in order, are
// always the route.
//
// Admin calls (Client.Admin) go to the configured nodes in order and move
// on from one that is unavailable — a central node that died or is cut off
// from its store — in passes paced the same way; every other answer is
// final. A call that moved on may have taken effect at the node that
// failed, so it is carried out at least once: a retried CreateKey that
// finds the key it asked for answers with it, a retried RotateKey may
// rotate twice. Configure every central node (or the edges, which forward
// admin calls) so that one of them can take over.
//
// All the attempts of one operation carry one request id (x-request-id),
// so the audit lines of every node tried, and of the central tier behind
// an edge, can be found together; WithRequestID sets it. Nodes keep it as
// the lines' client_request_id (and echo it as x-client-request-id): the
// audit's own request id is the node's, which a client cannot choose.
//
// # Forward proofs
//
// An edge forwards to the central tier what it cannot serve itself, and the
// central tier performs a forwarded call only as the client that signed it
// for that edge. The client signs a forward proof — method, SHA-256 of the
// request, the edge's SPIFFE id, the time, a nonce — with its
// certificate's key (ECDSA, Ed25519 or RSA-PSS) when LookupKey says the
// node forwards the operation, on KeyAdmin calls to a connection already
// seen to reach an edge, and when an edge answers FailedPrecondition with
// the ErrorInfo reason FORWARD_PROOF_REQUIRED: then the audience is the
// edge the connection's TLS handshake authenticated (learnt from the first
// call on it), never what the edge says, and the call is retried on that
// node; such calls (same connection, method and key) are then signed up
// front for a minute. Once a connection's node is known, proofs name it
// whatever LookupKey said, and a connection to a node that is not an edge
// gets none. An edge gets one proof per call: asking again for a call
// already signed for it gets no second one. Calls a node serves itself
// are not signed. A TLS configuration that supplies its certificate only
// through GetClientCertificate, or whose key is not a crypto.Signer, signs
// nothing, and edges refuse the calls they would forward.
//
// # Errors
//
// Every error is an *Error naming the operation, key and node, with the
// broker's gRPC code; errors.Is matches it against ErrNotFound,
// ErrPermissionDenied, ErrInvalidArgument, ErrUnavailable and the other
// sentinels, and status.Code reads its code.
//
// # Envelope encryption
//
// An Encryptor gets a data key with GenerateDataKey and seals messages
// locally with AES-256-GCM, reusing the data key for a bounded period,
// message count and byte count (Config.Reuse; default 5 minutes), one data
// key per encryption context. A Decryptor gets the data key of a
// ciphertext with DecryptDataKey and keeps it in a bounded cache, so every
// further message under it opens locally; concurrent misses for one data
// key make one call. Both use the ciphertext format of the servers
// (docs/ciphertext.md): a node's Decrypt opens what an Encryptor sealed,
// and a Decryptor opens what a node sealed.
//
// Together with the edge's own reuse and caches this is the second level
// of caching: an application sealing a million messages a minute under one
// key and context calls the broker about once per reuse period.
//
// # Security
//
// A data key in the client's memory opens, and could forge, every message
// sealed under it. Reuse bounds that exposure in time; a disabled or
// rotated key stops being used by an Encryptor when its data key's period
// ends, and a Decryptor keeps opening a disabled key's messages for up to
// DecryptorConfig.TTL. Choose shorter periods where that matters. The
// caller needs the GenerateDataKey action to encrypt and DecryptDataKey to
// decrypt this way; a caller with only Encrypt and Decrypt uses the
// Client's Encrypt and Decrypt, which never expose a data key.
//
// Data keys are held as secret bytes and zeroed when evicted or when the
// Encryptor or Decryptor is closed; the AEAD state built from them lives
// until the garbage collector takes it.
package client
