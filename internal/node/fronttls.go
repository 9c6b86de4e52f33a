package node

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
)

// ServeAWSFront serves an AWS front-end (aws_kms, xks) on addr with the
// node's certificate, and with clientCA set, mutual TLS (FrontTLS);
// maxBody is the handler's bound on a request body (ServeFront).
func (s *Shell) ServeAWSFront(name, addr, clientCA string, maxBody int64, h http.Handler) (string, error) {
	tlsCfg, err := FrontTLS(s.ID().PublicServerTLS(), clientCA)
	if err != nil {
		return "", fmt.Errorf("%s: %s.%w", s.name, name, err)
	}
	return s.ServeFront(name, addr, tlsCfg, maxBody, h)
}

// FrontTLS is the TLS configuration of an AWS front-end's listener: the
// node's public server configuration, and with clientCA (a PEM bundle) a
// client certificate required on every connection, chaining to one of its
// CAs — the listeners' optional mutual TLS. SigV4 still authenticates each
// request: the certificate only decides who may connect.
func FrontTLS(base *tls.Config, clientCA string) (*tls.Config, error) {
	if clientCA == "" {
		return base, nil
	}
	pem, err := os.ReadFile(clientCA)
	if err != nil {
		return nil, fmt.Errorf("client_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client_ca: %s holds no PEM certificate", clientCA)
	}
	c := base.Clone()
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.ClientCAs = pool
	return c, nil
}
