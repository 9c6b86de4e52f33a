package devcluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// checkPorts refuses a BasePort whose layout does not fit.
func (o *Options) checkPorts() error {
	switch {
	case o.BasePort == 0:
		return nil
	case o.BasePort < 0:
		return fmt.Errorf("devcluster: base port %d is negative", o.BasePort)
	case len(o.Edges) > MaxFixedEdges:
		return fmt.Errorf("devcluster: %d edges with fixed ports; at most %d fit below the operations ports", len(o.Edges), MaxFixedEdges)
	case o.lastNode() > MaxFixedEdges:
		return fmt.Errorf("devcluster: %d edges and %d central nodes with fixed ports; at most %d nodes besides the first central fit below the operations ports",
			len(o.Edges), o.Centrals, MaxFixedEdges)
	}
	top := o.port(o.lastNode(), true)
	if o.AWS != nil {
		top = o.port(o.lastNode(), false) + AWSPortOffset
	}
	if top > 65535 {
		return fmt.Errorf("devcluster: base port %d puts the last operations port at %d, above 65535", o.BasePort, top)
	}
	return nil
}

// lastNode is the number of the last node (see port).
func (o *Options) lastNode() int { return len(o.Edges) + max(o.Centrals, 1) - 1 }

// centralNode is the node number of central node i (see port).
func (o *Options) centralNode(i int) int {
	if i == 0 {
		return 0
	}
	return len(o.Edges) + i
}

// port is the gRPC or operations port of node: 0 the first central node,
// i+1 edge i, and len(Edges)+k central node k ≥ 1 (central-(k+1)), so
// that one central's layout is unchanged by more; 0 when the system
// chooses.
func (o *Options) port(node int, ops bool) int {
	if o.BasePort == 0 {
		return 0
	}
	p := o.BasePort + node
	if ops {
		p += OpsPortOffset
	}
	return p
}

// PortInUseError is a fixed port (Options.BasePort) another process
// holds.
type PortInUseError struct {
	// Port is the port; Use says whose it is ("central gRPC", "edge-eu
	// ops").
	Port int
	Use  string
	Err  error
}

func (e *PortInUseError) Error() string {
	return fmt.Sprintf("devcluster: port %d (%s) is already in use", e.Port, e.Use)
}

func (e *PortInUseError) Unwrap() error { return e.Err }

// probePorts listens on every fixed port once, so that a port another
// process holds is reported before anything is written or started. A port
// can still be taken between the probe and the node's own listen; that
// failure is reported the same way by portError.
func (o *Options) probePorts() error {
	if o.BasePort == 0 {
		return nil
	}
	names := []string{CentralName(0)}
	for _, e := range o.Edges {
		names = append(names, e.Name)
	}
	for i := 1; i < o.Centrals; i++ {
		names = append(names, CentralName(i))
	}
	kinds := []string{"gRPC", "ops"}
	if o.AWS != nil {
		kinds = append(kinds, "aws_kms")
	}
	for _, kind := range kinds {
		for node, name := range names {
			port := o.port(node, kind == "ops")
			if kind == "aws_kms" {
				port += AWSPortOffset
			}
			l, err := net.Listen("tcp", net.JoinHostPort(o.Host, strconv.Itoa(port)))
			if err != nil {
				use := name + " " + kind
				if errors.Is(err, syscall.EADDRINUSE) {
					return &PortInUseError{Port: port, Use: use, Err: err}
				}
				return fmt.Errorf("devcluster: %s port %d: %w", use, port, err)
			}
			l.Close()
		}
	}
	return nil
}

// portError turns a failed listen on one of node's fixed ports into a
// *PortInUseError; other errors pass through.
func (c *Cluster) portError(err error, name string, node int) error {
	if c.opts.BasePort == 0 || !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	opErr, ok := errors.AsType[*net.OpError](err)
	if !ok || opErr.Addr == nil {
		return err
	}
	_, p, _ := net.SplitHostPort(opErr.Addr.String())
	port, _ := strconv.Atoi(p)
	use := name + " gRPC"
	switch port {
	case c.opts.port(node, true):
		use = name + " ops"
	case c.opts.port(node, false) + AWSPortOffset:
		use = name + " aws_kms"
	}
	return &PortInUseError{Port: port, Use: use, Err: err}
}

// lockDir takes the directory's lock, so that two clusters never run
// from one directory: the second would rewrite the first's certificates
// and configuration, then fail on its keystore or registry.
func (c *Cluster) lockDir() error {
	path := filepath.Join(c.opts.Dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("devcluster: %s is in use by another running cluster (keybroker dev?): stop it, or use another directory", c.opts.Dir)
		}
		return fmt.Errorf("devcluster: locking %s: %w", path, err)
	}
	c.lock = f
	return nil
}

// unlockDir releases the lock (closing the file releases the flock).
func (c *Cluster) unlockDir() {
	if c.lock != nil {
		c.lock.Close()
		c.lock = nil
	}
}
