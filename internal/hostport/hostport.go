// Package hostport checks the host:port addresses the CLI and the SDK
// dial. grpc-go takes a bare host for host:443 and an unbracketed IPv6
// address for something else again, and reports either only as a failed
// connection; a check before dialling says what is wrong with the address
// itself.
package hostport

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/keybroker/keybroker/internal/clip"
)

// Check refuses addr unless it is host:port with a non-empty host and a
// numeric port of 1 to 65535. An IPv6 host is written in brackets,
// [::1]:7700. The error quotes at most clip.Max bytes of addr.
func Check(addr string) error {
	q := clip.Quote(addr)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		switch {
		case !strings.Contains(addr, ":"):
			example := "broker.example.com:7700"
			if len(addr) <= clip.Max && addr != "" {
				example = addr + ":7700"
			}
			return fmt.Errorf("address %s has no port: give host:port, e.g. %s", q, example)
		case strings.Count(addr, ":") > 1 && !strings.HasPrefix(addr, "["):
			return fmt.Errorf("address %s is not host:port: write an IPv6 address in brackets, e.g. [::1]:7700", q)
		}
		return fmt.Errorf("address %s is not host:port", q)
	}
	if host == "" {
		return fmt.Errorf("address %s names no host: give host:port", q)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %s: port %s is not a number from 1 to 65535", q, clip.Quote(port))
	}
	return nil
}
