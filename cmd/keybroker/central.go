package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/central"
	"github.com/keybroker/keybroker/config"
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
	node, err := central.Start(ctx, cfg, central.Options{Logger: log})
	if err != nil {
		log.Error("central failed to start", "err", err)
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var serveErr error
	for done := false; !done; {
		select {
		case <-hup:
			node.ReloadPolicy()
			node.ReloadIdentity()
		case serveErr = <-node.Done():
			log.Error("server stopped", "err", serveErr)
			done = true
		case <-ctx.Done():
			log.Info("shutting down")
			done = true
		}
	}
	return stopNode(ctx, node.Shutdown, cfg.ShutdownTimeout, log, serveErr)
}

// stopNode shuts a node down within timeout (whatever ended ctx) and
// reports a server that had stopped on its own (serveErr).
func stopNode(ctx context.Context, shutdown func(context.Context) error, timeout time.Duration, log *slog.Logger, serveErr error) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := shutdown(sctx); err != nil {
		log.Error("shutdown", "err", err)
		return err
	}
	log.Info("stopped")
	if serveErr != nil {
		return fmt.Errorf("server stopped: %w", serveErr)
	}
	return nil
}
