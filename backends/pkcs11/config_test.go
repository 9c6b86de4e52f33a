package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/secret"
)

func TestConfigValidate(t *testing.T) {
	slot := uint(3)
	good := func() Config {
		return Config{ModulePath: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "keybroker", PIN: secret.Copy([]byte("1234"))}
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // substring of the error; "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"by serial", func(c *Config) { c.TokenLabel, c.TokenSerial = "", "abc" }, ""},
		{"by slot", func(c *Config) { c.TokenLabel, c.SlotID = "", &slot }, ""},
		{"no module", func(c *Config) { c.ModulePath = "" }, "ModulePath is required"},
		{"relative module", func(c *Config) { c.ModulePath = "libsofthsm2.so" }, "not absolute"},
		{"no token", func(c *Config) { c.TokenLabel = "" }, "no token selected"},
		{"no PIN", func(c *Config) { c.PIN = nil }, "PIN is required"},
		{"empty PIN", func(c *Config) { c.PIN = secret.Copy(nil) }, "PIN is required"},
		{"negative sessions", func(c *Config) { c.MaxSessions = -1 }, "MaxSessions"},
		{"too many sessions", func(c *Config) { c.MaxSessions = MaxSessionsLimit + 1 }, "MaxSessions"},
		{"negative threshold", func(c *Config) { c.BreakerThreshold = -1 }, "BreakerThreshold"},
		{"negative cooldown", func(c *Config) { c.BreakerCooldown = -1 }, "BreakerCooldown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigNeverPrintsPIN(t *testing.T) {
	c := Config{ModulePath: "/m.so", TokenLabel: "t", PIN: secret.Copy([]byte("s3cr3t-pin"))}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("cfg", "config", c)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%v", &c), b.String()} {
		if strings.Contains(s, "s3cr3t") {
			t.Errorf("formatted config leaks the PIN: %s", s)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := New(context.Background(), Config{})
	var be *backends.Error
	if !errors.As(err, &be) || !errors.Is(err, backends.ErrInvalidArgument) {
		t.Errorf("New(Config{}) = %v, want a *backends.Error with ErrInvalidArgument", err)
	}
}

func TestReadPIN(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		content, want string
		ok            bool
	}{
		{"1234\n", "1234", true},
		{"1234", "1234", true},
		{"1234\r\n", "1234", true},
		{"12 34\n\n", "12 34\n", true},
		{"\n", "", false},
		{"", "", false},
	} {
		p := filepath.Join(dir, "pin")
		if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readPIN(p)
		if (err == nil) != tc.ok || (tc.ok && string(got.Reveal()) != tc.want) {
			t.Errorf("readPIN(%q) = %q, %v; want %q, ok=%v", tc.content, got.Reveal(), err, tc.want, tc.ok)
		}
	}
	if _, err := readPIN(filepath.Join(dir, "absent")); err == nil {
		t.Error("readPIN of a missing file succeeded")
	}
}

func TestOpenURIErrors(t *testing.T) {
	for _, uri := range []string{
		"pkcs11:token=t?pin-source=/x",     // no module
		"pkcs11:token=t?module-path=/m.so", // no pin-source
		"pkcs11:token=t?module-name=nosuch&pin-source=/x",
		"pkcs11:token=t?module-path=/m.so&pin-value=1", // refused by the parser
		"softkms:x",
	} {
		b, err := Open(context.Background(), uri, backends.Options{})
		if b != nil || !errors.Is(err, backends.ErrInvalidArgument) {
			t.Errorf("Open(%q) = %v, %v; want nil and ErrInvalidArgument", uri, b, err)
		}
	}
}
