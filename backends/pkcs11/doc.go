// Package pkcs11 is keybroker's PKCS#11 root of trust: an HSM token (in
// tests, SoftHSM2) reached through github.com/miekg/pkcs11.
//
// A [Backend] is opened once per token, with [New] from a [Config] or with
// [Open] from a pkcs11: URI (RFC 7512, parsed by backends.ParsePKCS11URI). It
// implements backends.Backend and the MACer, Signer, KeyCreator,
// DataKeyGenerator and HealthChecker capabilities, plus [Backend.WrapKWP] and
// [Backend.UnwrapKWP] (AES key wrap with padding).
//
// # Keys
//
// A key argument is the key's CKA_LABEL, or "id=%xx..." for its CKA_ID (see
// backends.PKCS11KeyName). A name resolves to one secret key — aes-256 (a
// 32-byte CKK_AES key) or hmac-256 (a CKK_GENERIC_SECRET or CKK_SHA256_HMAC
// key of at least 32 bytes) — or to one EC P-256 private key, whose public
// half is the public key object with the same label or id. The broker
// refuses (ErrPermissionDenied) any root key that is extractable or not
// sensitive, whether in Describe or on first use; SoftHSM lets such keys
// exist. CreateKey makes token keys that are private, sensitive, never
// extractable and limited to their usage.
//
// Encrypt is AES-256-GCM with a 12-byte IV drawn from crypto/rand by the
// broker (not by the token: GCM needs unique IVs, not secret ones, and this
// saves a round trip); the ciphertext is iv ‖ ciphertext ‖ tag. Decrypt never
// hands the token an IV of another length. MAC is CKM_SHA256_HMAC. Sign is
// raw CKM_ECDSA over the caller's SHA-256 digest, its r‖s converted to ASN.1
// DER. GenerateRandom and the data keys of GenerateDataKey come from
// C_GenerateRandom.
//
// # Concurrency model
//
// A Backend is safe for concurrent use. Each operation borrows one session
// from a bounded pool (Config.MaxSessions, by default 2×GOMAXPROCS capped
// at 32) for the whole of its call sequence, so sessions are never shared
// between goroutines. When every session is lent out, callers wait; the wait
// honours their context. A PKCS#11 call cannot be interrupted: the context is
// checked before the session is taken and before each call sequence (an
// Init and its final call form one sequence, since abandoning it would leave
// an operation active on the session), and a call in progress runs to its
// end. A cancelled context gives an error matching context.Canceled; an
// expired one, ErrUnavailable and context.DeadlineExceeded.
//
// A PKCS#11 module is process-global state: C_Initialize and C_Finalize
// affect the whole process, session and object handles are numbers shared by
// every user of the module, and the login is per process and token. So the
// package keeps one reference-counted record per loaded module, shared by
// all Backends in the process (its only global state, mirroring the C
// library's). The last Backend to close finalises the module; the library
// stays loaded. Calls on sessions run under the module's read lock; opening
// sessions, recovering and closing take its write lock. Thus no call is in
// flight when a session opens, and a session number the module re-issues
// (because the old session was closed, or the module re-initialised, behind
// our back) is detected and its stale holder marked dead before it can call
// into someone else's session.
//
// Resolved keys are cached by name for one module "generation"; any event
// that may have invalidated object handles (a stale handle, closed sessions,
// a re-initialisation) starts a new generation, which retires every cached
// handle and makes each Backend find its token and log in again.
//
// # Sessions and recovery
//
// One extra logged-in session is kept open for the Backend's lifetime so
// the login persists; every new session also logs in, and
// CKR_USER_ALREADY_LOGGED_IN is success. Failures are repaired without a
// restart, and the operation is retried (at most twice, with at most one
// module re-initialisation):
//
//   - CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID: flush the handle
//     caches and look the key up again.
//   - CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_USER_NOT_LOGGED_IN
//     (also detected when a lookup finds nothing on a session that lost its
//     login, which must not read as "no such key"): probe every session,
//     forget the dead ones, log in again.
//   - CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT,
//     CKR_TOKEN_NOT_RECOGNIZED, CKR_SLOT_ID_INVALID,
//     CKR_CRYPTOKI_NOT_INITIALIZED: C_Finalize, C_Initialize, find the token
//     again by label or serial, log in.
//
// Concurrent failures recover once: each recovery names the generation it
// saw, and a recovery that finds the generation already moved does nothing.
// A circuit breaker counts consecutive failed recoveries; after
// Config.BreakerThreshold it fails every call fast with ErrUnavailable for
// Config.BreakerCooldown (measured on Config.Now, injectable for tests), then
// lets one probe through: its success closes the breaker, its failure opens
// it again. Health reports the breaker, the login state and the token's
// presence.
//
// Every error is a *backends.Error naming the operation and key, with the
// pkcs11.Error (the CKR code) reachable through errors.As. CKR codes map to
// the taxonomy: handle invalid → ErrNotFound; wrong key type, usage not
// permitted, invalid mechanism or data → ErrInvalidArgument; PIN errors →
// ErrPermissionDenied; device, session and initialisation errors →
// ErrUnavailable (retryable).
//
// # Metrics
//
// With Config.Metrics set the Backend exports, all prefixed
// keybroker_pkcs11_ and labelled with the configured token (never a key
// name): sessions_open, sessions_in_use and pool_waiters gauges;
// operations_total by op and code (backends.CodeOf); pool_wait_seconds (the
// wait for a session) apart from operation_seconds (time on the session);
// recoveries_total by kind and result; breaker_state.
//
// # SoftHSM quirks handled
//
//   - Tokens initialised with --free land in random slot ids: tokens are
//     selected by label or serial, and found again after a re-initialisation.
//   - A failed GCM decryption (bad tag or aad) and a failed KWP unwrap return
//     CKR_GENERAL_ERROR: on C_Decrypt and C_UnwrapKey, whose key and mechanism
//     were already accepted, that code means ErrDecryptionFailed.
//   - Any GCM IV length is accepted, even one byte: the broker makes and
//     enforces 12-byte IVs.
//   - CKM_AES_KEY_WRAP zero-pads silently, and SoftHSM 2.6.1's
//     CKM_AES_KEY_WRAP_PAD zero-pads the key to a multiple of 8 before
//     wrapping and records the padded length, so it unwraps longer than it
//     went in: WrapKWP accepts only multiples of 8 bytes, where KWP is exact.
//   - Extractable or non-sensitive keys may exist (and extractable keys may
//     be derived from non-extractable ones): the broker checks
//     CKA_EXTRACTABLE and CKA_SENSITIVE itself, and optionally
//     CKA_NEVER_EXTRACTABLE and CKA_ALWAYS_SENSITIVE.
//   - No CKM_ECDSA_SHA256: the caller hashes, the token signs raw.
//   - CKA_EC_POINT comes DER-wrapped (an OCTET STRING); a bare point from
//     other modules is accepted too.
//   - Session and object handles come from one counter that restarts when
//     the module is initialised again; a new session numbered at or below
//     the highest handle seen proves a re-initialisation behind our back.
//   - Closing a session while another thread is inside a call on it frees
//     memory in use (it was seen to return a wrong HMAC): the Backend only
//     ever closes sessions it holds, with no call in flight.
//
// # Why not crypto11
//
// ThalesGroup/crypto11 keeps its own module reference count, session pool
// and login, and calls C_Initialize and C_Finalize itself; in one process
// with this package it would finalise the module under the Backend (or fail
// to initialise it), and it has no recovery. Its AEAD panics on a PKCS#11
// error (cipher.AEAD has no error return) and it cannot wrap, unwrap or
// derive. The hot paths would call miekg/pkcs11 directly anyway, so the pool,
// login and key generation are this package's own and crypto11 is not used.
//
// # Limitations
//
//   - Only aes-256, hmac-256 and ecdsa-p256 root keys; no Ed25519, RSA or
//     disabled keys (PKCS#11 has no notion of a disabled key).
//   - Random 96-bit GCM IVs bound a key to 2^32 encryptions (NIST SP
//     800-38D); rotate root keys long before.
//   - CreateKey's "label exists" check is atomic within a Backend, not
//     against other processes using the token.
//   - A C_Login with a wrong PIN "succeeds" (CKR_USER_ALREADY_LOGGED_IN)
//     while any other session in the process is logged in to the token, so a
//     wrong PIN is only reported when this process is not logged in yet.
//   - Other users of the same module in the process (another library calling
//     C_Finalize or C_CloseAllSessions) are outside the module lock; the
//     Backend recovers from what they do between its calls, but cannot make
//     their calls during its own safe. Object handles cached before such an
//     external re-initialisation are retired when it is detected; on modules
//     whose handles are not monotonic (not SoftHSM) detection relies on
//     errors and re-issued session numbers only.
//   - The PIN is kept in memory (in a secret.Bytes) to log in again after a
//     recovery, and passed to miekg/pkcs11 as a Go string, which cannot be
//     zeroed; plaintexts and MACs pass through C buffers that miekg/pkcs11
//     frees without zeroing.
package pkcs11
