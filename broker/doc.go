// Package broker is keybroker's central tier: the key registry and its
// lifecycle, the material service that asks roots of trust to derive or
// wrap managed-key material, and the service that performs every operation
// — with material, or inside the root of trust for backend-mode keys.
//
// The key model and the operations on material live in package managed,
// shared with the edges; broker uses managed's names for them.
//
// # Registry
//
// Keys are JSON documents in a store.Store; every change is a
// compare-and-swap on the key's revision, so concurrent admins never lose
// an update, and the store's change feed carries each committed change to
// edges. Deletion is scheduled with a pending window (default 30 days, at
// least 7) during which the key refuses every operation and the deletion
// can be cancelled.
//
// # Memory at many keys
//
// The registry keeps a bounded cache of decoded keys (DefaultKeyCache,
// CLOCK eviction); the rest stay in the store and are read on use. The
// change feed replaces only keys the cache holds. Listings never fill the
// cache and are read a page at a time: ListKeys from its page token's id
// (Registry.Page), the sweep likewise, an edge's Watch snapshot at one
// revision (Registry.Scan). Nothing at the central holds every key.
//
// # Cost of a caller
//
// Every root's backend is behind backends.Instrument, so every call to a
// root of trust is checked, charged to the principal in the request's
// context (SetBudget; a caller past its budget gets ErrResourceExhausted
// and the backend is not called), counted, timed and listed in the
// request's audit line, with no call site doing it by hand. A
// backend-mode data key the backend refused to unwrap is remembered, per
// key, version and wrapped bytes, for FailedUnwrapTTL, so the same forged
// data key sent again costs no backend call.
package broker
