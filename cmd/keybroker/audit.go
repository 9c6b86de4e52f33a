package main

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/keybroker/keybroker/audit"
)

// auditJSON is the result of audit verify in --output json.
type auditJSON struct {
	File        string `json:"file"`
	Valid       bool   `json:"valid"`
	Lines       uint64 `json:"lines"` // lines verified (before the break, if any)
	LastHash    string `json:"last_hash,omitempty"`
	HeadMatched bool   `json:"head_matched"`
	Line        uint64 `json:"line,omitempty"` // where the chain broke
	Reason      string `json:"reason,omitempty"`
}

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "audit",
		Short:   "Work with keybroker audit logs",
		Example: `  keybroker audit verify /var/lib/keybroker/audit.log`,
		Args:    subcommands,
		RunE:    helpRun,
	}
	cmd.AddCommand(a.auditVerifyCmd())
	return cmd
}

func (a *app) auditVerifyCmd() *cobra.Command {
	var requireHead bool
	var headKeyFile string
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check an audit log's hash chain; exit 7 if it is broken",
		Long: `Check every line's hash, sequence number and link to the line before, and,
when FILE.head exists, that the log ends exactly where the head file says
(so lines dropped from the end are caught). Prints how many lines verified
and whether the head file matched.

A broken chain exits 7 and names the first bad line and why. Without a head
file the chain can still be verified, but a log cut short cannot be told
from a complete one; --require-head makes that a failure too.

With --head-key-file (the node's audit.head_key_file), the head file is
required and its MAC is checked, so a log cut short whose head was rewritten
by someone without the key is caught too.
This runs locally on the file; it needs no broker.`,
		Example: `  keybroker audit verify /var/lib/keybroker/audit.log
  keybroker audit verify --require-head --output json audit.log
  keybroker audit verify --head-key-file /etc/keybroker/audit-head.key audit.log`,
		Args: exactly("FILE"),
		RunE: func(_ *cobra.Command, args []string) error {
			path := args[0]
			var key []byte
			if headKeyFile != "" {
				var err error
				if key, err = audit.ReadHeadKey(headKeyFile); err != nil {
					return err
				}
			}
			res, err := audit.VerifyFileWithKey(path, key)
			if err != nil {
				ve, isBreak := errors.AsType[*audit.VerifyError](err)
				if _, isIO := errors.AsType[*fs.PathError](err); isIO && !isBreak {
					return fmt.Errorf("audit log %s: %w", path, err)
				}
				// Anything else is about the content: a broken chain or a
				// malformed head file.
				r := auditJSON{File: path, Lines: res.Lines, Reason: err.Error()}
				if isBreak {
					r.Line, r.Reason = ve.Line, ve.Reason
				}
				if a.jsonOutput() {
					if err := a.printJSON(r); err != nil {
						return err
					}
				}
				return verifyFailedf("audit log %s does not verify: %v", path, err)
			}
			headless := requireHead && !res.HeadSeen
			if a.jsonOutput() {
				r := auditJSON{File: path, Valid: !headless, Lines: res.Lines, LastHash: res.LastHash, HeadMatched: res.HeadSeen}
				if headless {
					r.Reason = "no head file"
				}
				if err := a.printJSON(r); err != nil {
					return err
				}
			} else {
				head := "head file matched"
				if res.HeadAuthenticated {
					head = "head file matched and its MAC checked"
				}
				if !res.HeadSeen {
					head = "no head file (" + path + ".head), so lines dropped from the end would go unnoticed"
				}
				if _, err := fmt.Fprintf(a.env.stdout, "%s: %d lines verified; %s\n", path, res.Lines, head); err != nil {
					return err
				}
			}
			if headless {
				return verifyFailedf("audit log %s has no head file to check its end against (--require-head)", path)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&requireHead, "require-head", false, "fail (exit 7) when there is no head file")
	cmd.Flags().StringVar(&headKeyFile, "head-key-file", "", "check the head file's MAC with this key (the node's audit.head_key_file)")
	a.addOutputFlag(cmd.Flags())
	return cmd
}
