package pkcs11

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/secret"
)

// Open opens a backend from a pkcs11: URI (RFC 7512), for example
//
//	pkcs11:token=keybroker?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin
//	pkcs11:serial=39f992ea498fad31?module-name=softhsm2&pin-source=file:/etc/keybroker/pin&max-sessions=16
//	pkcs11:token=keybroker;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/secrets/pin
//
// The token is selected by token (label), serial, manufacturer, model and
// slot-id; every one given must match. module-path names the library;
// module-name is resolved in the standard library directories (as name,
// name.so or libname.so). pin-source is required: the file is read once and
// one trailing newline is removed. max-sessions sets Config.MaxSessions.
// Key attributes (object, id, type) are accepted and ignored: keys are named
// per call.
func Open(ctx context.Context, uri string, opts backends.Options) (backends.Backend, error) {
	u, err := backends.ParsePKCS11URI(uri)
	if err != nil {
		return nil, backends.NewError(scheme, opOpen, "", backends.ErrInvalidArgument, err)
	}
	cfg := Config{
		TokenLabel:        u.Token,
		TokenSerial:       u.Serial,
		TokenManufacturer: u.Manufacturer,
		TokenModel:        u.Model,
		MaxSessions:       u.MaxSessions,
		Logger:            opts.Logger,
		Metrics:           opts.Metrics,
	}
	if u.SlotID >= 0 {
		slot := uint(u.SlotID)
		cfg.SlotID = &slot
	}
	switch {
	case u.ModulePath != "":
		cfg.ModulePath = u.ModulePath
	case u.ModuleName != "":
		if cfg.ModulePath, err = findModule(u.ModuleName); err != nil {
			return nil, backends.NewError(scheme, opOpen, "", backends.ErrInvalidArgument, err)
		}
	default:
		return nil, backends.Errorf(scheme, opOpen, "", backends.ErrInvalidArgument, "the URI names no module: add module-path= (or module-name=)")
	}
	if u.PinSource == "" {
		return nil, backends.Errorf(scheme, opOpen, "", backends.ErrInvalidArgument, "the URI has no pin-source: put the user PIN in a file and name it with pin-source=")
	}
	pin, err := readPIN(u.PinSource)
	if err != nil {
		return nil, backends.NewError(scheme, opOpen, "", backends.ErrInvalidArgument, err)
	}
	cfg.PIN = pin
	defer pin.Destroy()
	b, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// readPIN reads a pin-source file, dropping one trailing newline.
func readPIN(path string) (*secret.Bytes, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading pin-source: %w", err)
	}
	n := len(raw)
	if n > 0 && raw[n-1] == '\n' {
		n--
		if n > 0 && raw[n-1] == '\r' {
			n--
		}
	}
	pin := secret.Copy(raw[:n])
	clear(raw)
	if pin.Len() == 0 {
		return nil, fmt.Errorf("pin-source %s is empty", path)
	}
	return pin, nil
}

// moduleDirs are searched for module-name, in order.
var moduleDirs = []string{
	"/usr/lib/pkcs11", "/usr/lib64/pkcs11", "/usr/local/lib/pkcs11",
	"/usr/lib/" + multiarch() + "/pkcs11", "/usr/lib/softhsm", "/usr/lib/" + multiarch() + "/softhsm",
	"/usr/lib/" + multiarch(), "/usr/lib64", "/usr/lib", "/usr/local/lib",
}

func multiarch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64-linux-gnu"
	case "arm64":
		return "aarch64-linux-gnu"
	}
	return runtime.GOARCH + "-linux-gnu"
}

// findModule resolves a bare module name to a library path.
func findModule(name string) (string, error) {
	cands := []string{name}
	if !strings.HasSuffix(name, ".so") {
		cands = append(cands, name+".so", "lib"+name+".so")
	}
	for _, dir := range moduleDirs {
		for _, c := range cands {
			p := filepath.Join(dir, c)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("module-name %q not found in %s", name, strings.Join(moduleDirs, ", "))
}
