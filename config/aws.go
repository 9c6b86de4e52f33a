package config

import "regexp"

// AWSKMS serves the AWS KMS JSON API (package awsjson) on a listener of
// its own, so that unmodified AWS clients use this node's keys with
// keybroker access keys (keybroker access-key create). Optional.
type AWSKMS struct {
	// Listen is the HTTPS address AWS clients dial (their endpoint URL is
	// https://<host>:<port>), presenting the node's certificate. Required.
	Listen string `yaml:"listen"`
	// Region is the AWS region name clients sign for and key ARNs carry,
	// e.g. eu-west-1. Required.
	Region string `yaml:"region"`
	// Account is the 12-digit account id key ARNs carry. Required.
	Account string `yaml:"account"`
	// ClientCA, when set, is a PEM bundle of CA certificates: the listener
	// then asks every client for a certificate that chains to one of them
	// (mutual TLS) and refuses the connection without one, in addition to
	// SigV4, which still names the principal. Relative to the
	// configuration file. Optional.
	ClientCA string `yaml:"client_ca"`
}

// resolve makes ClientCA absolute against baseDir.
func (a *AWSKMS) resolve(baseDir string) {
	if a != nil {
		resolvePath(baseDir, &a.ClientCA)
	}
}

// checkClientCA checks an optional client_ca path.
func checkClientCA(p *problems, field, v string) {
	if v != "" {
		checkPath(p, field, v)
	}
}

var (
	awsRegionRe  = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	awsAccountRe = regexp.MustCompile(`^[0-9]{12}$`)
)

func (a *AWSKMS) check(p *problems, field, listen, ops string) {
	if a == nil {
		return
	}
	l, ok := checkListen(p, field+".listen", a.Listen)
	for name, other := range map[string]string{"listen": listen, "ops_listen": ops} {
		if o, ook := listenOf(other); ok && ook && l.overlaps(o) {
			p.add(field+".listen", "%q overlaps %s %q: the AWS API needs a port of its own", a.Listen, name, other)
		}
	}
	if !awsRegionRe.MatchString(a.Region) {
		p.add(field+".region", "%q is not an AWS region name such as eu-west-1", a.Region)
	}
	if !awsAccountRe.MatchString(a.Account) {
		p.add(field+".account", "%q is not a 12-digit AWS account id", a.Account)
	}
	checkClientCA(p, field+".client_ca", a.ClientCA)
}

// listenOf parses a listen address already checked elsewhere.
func listenOf(v string) (listenAddr, bool) {
	var p problems
	return checkListen(&p, "", v)
}
