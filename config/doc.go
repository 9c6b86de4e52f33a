// Package config is keybroker's configuration: YAML files decoded strictly
// into typed structs and validated before a node starts. [Central] is the
// central process's, [Edge] an edge's. What they share is one block,
// [Node], embedded inline in both (its fields are top-level in either
// file): identity, listeners, ops, data_dir, [Audit], [MaterialCache],
// [DataKeyReuse], [Limits], [Log] and shutdown_timeout, decoded, defaulted,
// checked and reported by one piece of code, so that a shared field means
// the same in both files. docs/config.md describes every field.
//
// # Loading
//
// [LoadCentral] and [LoadEdge] read a file, [ParseCentral] and [ParseEdge]
// the same from bytes. They decode over the defaults ([DefaultCentral],
// [DefaultEdge]), resolve relative paths against the file's directory, and
// validate ([Central.Validate], [Edge.Validate]). [Central.Check] and
// [Edge.Check] are separate and look at the file system (the TLS files are
// readable, data_dir is a directory), because validation must not depend
// on the machine it runs on: a configuration is validated the same in CI
// as on the host.
//
// # Strictness
//
// A configuration is one YAML document of at most [MaxFileSize] bytes.
// Unknown fields, fields given twice, values of the wrong kind (a list
// where a mapping belongs), numbers that are not whole, durations without a
// unit ("30" could mean seconds or nanoseconds), booleans other than true
// and false, null values and YAML aliases are errors, as are values out of
// range. Values are taken as written: nothing is case-folded or trimmed. A
// field left out takes its default; a field given must be valid.
//
// # Errors
//
// Every problem is an [*Error] naming the file, the field path
// (backends[1].uri) and the line where known, and all of them are
// reported at once, joined with errors.Join, so one run lists everything
// to fix.
//
// # Secrets
//
// No field holds a secret, by design: a PKCS#11 PIN comes from the file its
// URI's pin-source names (pin-value is refused), a softkms KEK or
// passphrase from kek-source or passphrase-source, a TLS key from tls.key,
// and cloud credentials from the SDKs' usual sources. A configuration can
// therefore be logged, diffed and kept in version control. Errors about a
// backend URI still leave the URI out, in case one was written with a PIN
// in it.
package config
