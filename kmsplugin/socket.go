package kmsplugin

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// SocketOptions say who may connect to the plugin's socket.
type SocketOptions struct {
	// Group, when set, is the group (a name or a numeric id) the socket
	// is given; its mode is then 0660. Empty: the process's group, mode
	// 0600.
	Group string
}

// groupID resolves a group name or number.
func groupID(g string) (int, error) {
	if id, err := strconv.Atoi(g); err == nil && id >= 0 {
		return id, nil
	}
	gr, err := user.LookupGroup(g)
	if err != nil {
		return 0, fmt.Errorf("kmsplugin: socket group: %w", err)
	}
	return strconv.Atoi(gr.Gid)
}

// staleProbe bounds the dial that decides whether a socket file left in
// place is still served.
const staleProbe = time.Second

// Listen listens on the unix socket path. A file already there is
// removed only if it is a socket on which nothing accepts (a plugin that
// died); any other file, or a live socket, is an error. The socket is
// made under a temporary name in the same directory, given its mode and
// group, and renamed into place, so it never exists at path with wider
// permissions. Closing the listener removes path.
func Listen(path string, opts SocketOptions) (net.Listener, error) {
	if path == "" || !filepath.IsAbs(path) {
		return nil, fmt.Errorf("kmsplugin: socket path %q is not absolute", path)
	}
	gid := -1
	if opts.Group != "" {
		id, err := groupID(opts.Group)
		if err != nil {
			return nil, err
		}
		gid = id
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp"+strconv.Itoa(os.Getpid()))
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("kmsplugin: listen: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	mode := fs.FileMode(0o600)
	if gid >= 0 {
		mode = 0o660
		if err := os.Chown(tmp, -1, gid); err != nil {
			return fail(fmt.Errorf("kmsplugin: socket group %s: %w", opts.Group, err))
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("kmsplugin: socket mode: %w", err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("kmsplugin: socket: %w", err))
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("kmsplugin: socket: %w", err))
	}
	return &listener{UnixListener: ln, path: path, fi: fi}, nil
}

// removeStale removes path if it is a socket nobody serves.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kmsplugin: socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("kmsplugin: %s exists and is not a socket (%s): not removing it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, staleProbe)
	if err == nil {
		c.Close()
		return fmt.Errorf("kmsplugin: %s is in use: another process accepts on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kmsplugin: removing stale socket: %w", err)
	}
	return nil
}

// listener removes its path when closed, unless another plugin has put
// its own socket there since.
type listener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
	once sync.Once
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
				err = rerr
			}
		}
	})
	return err
}
