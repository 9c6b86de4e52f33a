package config

import (
	"regexp"

	"github.com/keybroker/keybroker/envelope"
)

// XKS serves the AWS KMS External Key Store proxy API (package xks) on a
// listener of its own, so that an AWS KMS external key store uses this
// node's AES keys, signing with keybroker access keys (keybroker
// access-key create). Optional.
type XKS struct {
	// Listen is the HTTPS address AWS KMS dials (the key store's proxy
	// URI endpoint is https://<host>:<port>), presenting the node's
	// certificate. Required.
	Listen string `yaml:"listen"`
	// Region is the AWS region of the key store, which AWS KMS signs for.
	// Required.
	Region string `yaml:"region"`
	// Prefix is the proxy URI path before /kms/xks/v1: empty or up to 128
	// characters of /-separated [A-Za-z0-9_-] segments, e.g. /kb/xks.
	// Optional.
	Prefix string `yaml:"prefix"`
	// HealthKey is the AES key the health check encrypts and decrypts
	// with; the key store's access keys must be allowed Encrypt and
	// Decrypt on it. Required.
	HealthKey string `yaml:"health_key"`
	// ClientCA, when set, is a PEM bundle of the CA certificates that sign
	// the client certificate AWS KMS presents (the key store's mutual TLS
	// option): the listener refuses connections without one chaining to
	// them, in addition to SigV4. Relative to the configuration file.
	// Optional.
	ClientCA string `yaml:"client_ca"`
}

// resolve makes ClientCA absolute against baseDir.
func (x *XKS) resolve(baseDir string) {
	if x != nil {
		resolvePath(baseDir, &x.ClientCA)
	}
}

var xksPrefixRe = regexp.MustCompile(`^(/[A-Za-z0-9_-]+)*$`)

func (x *XKS) check(p *problems, field string, others map[string]string) {
	if x == nil {
		return
	}
	l, ok := checkListen(p, field+".listen", x.Listen)
	for name, other := range others {
		if o, ook := listenOf(other); ok && ook && l.overlaps(o) {
			p.add(field+".listen", "%q overlaps %s %q: the XKS proxy needs a port of its own", x.Listen, name, other)
		}
	}
	if !awsRegionRe.MatchString(x.Region) {
		p.add(field+".region", "%q is not an AWS region name such as eu-west-1", x.Region)
	}
	if len(x.Prefix) > 128 || !xksPrefixRe.MatchString(x.Prefix) {
		p.add(field+".prefix", "%q must be empty or /-separated segments of [A-Za-z0-9_-] (such as /kb/xks), at most 128 characters", x.Prefix)
	}
	if !envelope.ValidKeyID(x.HealthKey) {
		p.add(field+".health_key", "%q is not a key id: 1-128 of [A-Za-z0-9._:/-], starting with a letter or digit", x.HealthKey)
	}
	checkClientCA(p, field+".client_ca", x.ClientCA)
}
