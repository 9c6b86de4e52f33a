package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at link time: go build -ldflags "-X main.version=v1.2.3".
// Without it the module version from the build info is used.
var version string

type buildInfoJSON struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func buildVersion() buildInfoJSON {
	v := buildInfoJSON{Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Revision = s.Value
			case "vcs.modified":
				if s.Value == "true" && v.Revision != "" {
					v.Revision += "-dirty"
				}
			}
		}
	}
	if v.Version == "" {
		v.Version = "devel"
	}
	return v
}

func (a *app) versionCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print keybroker's version",
		Example: `  keybroker version
  keybroker version --output json`,
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error {
			v := buildVersion()
			if a.jsonOutput() {
				return a.printJSON(v)
			}
			rev := ""
			if v.Revision != "" {
				rev = ", " + v.Revision
			}
			_, err := fmt.Fprintf(a.env.stdout, "keybroker %s (%s, %s%s)\n", v.Version, v.GoVersion, v.Platform, rev)
			return err
		},
	}
	a.addOutputFlag(cmd.Flags())
	return cmd
}
