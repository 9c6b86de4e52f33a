package main

import (
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// nodeLong explains enrollment for `keybroker node --help`.
const nodeLong = `Enroll, change and remove edges.

An edge belongs to the cluster once an admin has enrolled it: the central
tier refuses Register, Watch, FetchMaterial and Forward from an edge no admin
enrolled. Its region and labels — what placement expressions and policies see
as principal.region and the principal's tags, and what orders LookupKey's
answers — are the enrolled ones, never what the edge says of itself. ID is
the edge's name, the last element of its certificate's SPIFFE id
(spiffe://TRUST-DOMAIN/edge/ID).

Removing an edge cuts its Watch stream at once, refuses it until it is
enrolled again, and drops it from every node's inventory and LookupKey; an
edge told it was removed forgets its keys and its material, in memory and on
disk.`

func (a *app) nodeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Enroll, change and remove edges: their region and labels are set here",
		Long:  nodeLong,
		Example: `  keybroker node enroll edge-eu-1 --region eu --label zone=eu-west-1a
  keybroker node update edge-eu-1 --label pci=yes
  keybroker node remove edge-eu-1`,
		Args: subcommands,
		RunE: helpRun,
	}
	a.addClientFlags(cmd.PersistentFlags())
	cmd.AddCommand(a.nodeEnrollCmd(), a.nodeUpdateCmd(), a.nodeRemoveCmd())
	return cmd
}

func (a *app) nodeEnrollCmd() *cobra.Command {
	var (
		region string
		labels pairsValue
	)
	cmd := &cobra.Command{
		Use:   "enroll ID --region R [--label k=v]...",
		Short: "Admit an edge to the cluster with its region and labels",
		Long: `Admit edge ID with the region and labels given. Until it is enrolled the
central tier refuses the edge. An edge already enrolled is refused: change it
with keybroker node update.`,
		Example: `  keybroker node enroll edge-eu-1 --region eu
  keybroker node enroll edge-eu-2 --region eu --label zone=eu-west-1b --label pci=yes`,
		Args: exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if region == "" {
				return usageErrorf("--region is required: the region the edge serves, such as eu")
			}
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			n, err := invoke(s, "node enroll", s.admin.EnrollNode, &kbv1.EnrollNodeRequest{NodeId: args[0], Region: region, Labels: labels.m})
			if err != nil {
				return err
			}
			return a.printNode(n)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&region, "region", "", "the edge's region (required)")
	fs.Var(&labels, "label", "label k=v; repeat for more")
	return cmd
}

func (a *app) nodeUpdateCmd() *cobra.Command {
	var (
		region        string
		labels        pairsValue
		replaceLabels bool
	)
	cmd := &cobra.Command{
		Use:   "update ID [--region R] [--label k=v]... [--replace-labels]",
		Short: "Change an enrolled edge's region or labels",
		Long: `Change edge ID's region or labels. Only the fields given change.

--label adds or replaces labels (--label k= removes k); with --replace-labels
the edge's labels become exactly the --label pairs given (none: no labels).
Placement follows at once: the edge receives no more material placement no
longer lets it hold, and drops what it holds.`,
		Example: `  keybroker node update edge-eu-1 --region eu-central
  keybroker node update edge-eu-1 --label pci=yes
  keybroker node update edge-eu-1 --replace-labels --label zone=eu-west-1c`,
		Args: exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			fs := cmd.Flags()
			if !slices.ContainsFunc([]string{"region", "label", "replace-labels"}, fs.Changed) {
				return usageErrorf("nothing to update: give --region, --label or --replace-labels")
			}
			req := &kbv1.UpdateNodeRequest{NodeId: args[0], Labels: labels.m, ReplaceLabels: replaceLabels}
			if fs.Changed("region") {
				req.Region = &region
			}
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			n, err := invoke(s, "node update", s.admin.UpdateNode, req)
			if err != nil {
				return err
			}
			return a.printNode(n)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&region, "region", "", "new region")
	fs.Var(&labels, "label", "set label k=v (k= removes it); repeat for more")
	fs.BoolVar(&replaceLabels, "replace-labels", false, "make the edge's labels exactly the --label pairs given")
	return cmd
}

func (a *app) nodeRemoveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remove ID",
		Short: "Withdraw an edge: cut its stream, refuse it, drop it from lookups",
		Long: `Remove edge ID from the cluster. Its Watch stream is cut at once; its
Register, Watch, FetchMaterial and Forward are refused until it is enrolled
again; every node drops it from its inventory and from LookupKey. An edge told
it was removed forgets its keys and material, in memory and on disk.`,
		Example: `  keybroker node remove edge-eu-1`,
		Args:    exactly("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			resp, err := invoke(s, "node remove", s.admin.RemoveNode, &kbv1.RemoveNodeRequest{NodeId: args[0]})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.printJSON(map[string]any{"node_id": args[0], "removed": true, "revision": resp.GetRevision()})
			}
			_, err = fmt.Fprintf(a.env.stdout, "removed %s (revision %d)\n", args[0], resp.GetRevision())
			return err
		},
	}
	return cmd
}

// printNode prints one edge's record.
func (a *app) printNode(n *kbv1.Node) error {
	if a.jsonOutput() {
		return a.printJSON(toNodeJSON(n))
	}
	return a.printTable([][]string{{"NODE", "REGION", "LABELS", "ENROLLED"},
		{n.GetNodeId(), orDash(n.GetRegion()), orDash(labelsText(n.GetLabels(), ",")), fmt.Sprint(n.GetEnrolled())}})
}
