package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/internal/node"
)

func newCentralCmd(e *env) *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "central --config central.yaml",
		Short: "Run a central node: the tier that holds the roots of trust",
		Long: `Run a central node. The configuration (docs/config.md) names the roots of
trust, the listen addresses, the TLS files, the data directory and the
policy files; it is decoded strictly and validated before anything starts.

The node serves KeyBroker and KeyAdmin over mutual TLS, and /healthz,
/readyz and /metrics on ops_listen (also mutual TLS). Logs are JSON lines on
stderr (log.format: text for humans). SIGHUP reloads the TLS files, the
revocation lists and the policy files (a bad file is refused and what is in
force stays); SIGINT or SIGTERM stops the node gracefully within
shutdown_timeout.`,
		Example: `  keybroker central --config /etc/keybroker/central.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadCentral(configPath)
			if err != nil {
				return usageError(err)
			}
			if err := cfg.Check(); err != nil {
				return usageError(err)
			}
			log := cfg.Log.NewLogger(e.stderr)
			return runCentral(cmd.Context(), cfg, log)
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "path of the central node's YAML configuration (required)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func runCentral(ctx context.Context, cfg *config.Central, log *slog.Logger) error {
	n, err := central.Start(ctx, cfg, central.Options{Logger: log})
	if err != nil {
		log.Error("central failed to start", "err", err)
		return err
	}
	return node.Run(ctx, n, func() {
		n.ReloadPolicy()
		n.ReloadIdentity()
	}, cfg.ShutdownTimeout, log)
}
