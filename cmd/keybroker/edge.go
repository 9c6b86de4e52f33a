package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/edge"
	"github.com/keybroker/keybroker/internal/node"
)

func newEdgeCmd(e *env) *cobra.Command {
	var configPath string
	cmd := &cobra.Command{
		Use:   "edge --config edge.yaml",
		Short: "Run an edge node: serves clients near them from sealed, cached key material",
		Long: `Run an edge node. The configuration (docs/config.md) names the central
tier, this edge's region and labels, the listen addresses, the TLS files
(the certificate must be spiffe://<trust_domain>/edge/<node_id>, with the
serverAuth and clientAuth usages) and the
data directory; it is decoded strictly and validated before anything starts.

The edge follows the central tier (reconnecting with backoff), keeps the
key metadata and the material sealed to it in data_dir, and serves KeyBroker
and KeyAdmin over mutual TLS: locally for keys whose material it may hold,
forwarded to the central tier otherwise. Disconnected, it serves from its
replica until its lease plus max_staleness runs out, then refuses with
Unavailable. /healthz, /readyz and /metrics are on ops_listen. The TLS files
and revocation lists are reloaded when they change and on SIGHUP. SIGINT or
SIGTERM stops the edge gracefully within shutdown_timeout.`,
		Example: `  keybroker edge --config /etc/keybroker/edge.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadEdge(configPath)
			if err != nil {
				return usageError(err)
			}
			if err := cfg.Check(); err != nil {
				return usageError(err)
			}
			return runEdge(cmd.Context(), cfg, cfg.Log.NewLogger(e.stderr))
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "path of the edge node's YAML configuration (required)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func runEdge(ctx context.Context, cfg *config.Edge, log *slog.Logger) error {
	n, err := edge.Start(ctx, cfg, edge.Options{Logger: log})
	if err != nil {
		log.Error("edge failed to start", "err", err)
		return err
	}
	return node.Run(ctx, n, n.ReloadIdentity, cfg.ShutdownTimeout, log)
}
