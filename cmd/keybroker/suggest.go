package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// suggestSubcommands makes every command under c that groups others
// refuse an unknown subcommand with cobra's suggestions, as cobra does for
// the root alone: `unknown command "craete" for "keybroker key"; did you
// mean create?`. The refusal is still a usage error (exit 2).
func suggestSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		if sub.HasSubCommands() {
			// cobra's own default of 2 applies to the root alone.
			if sub.SuggestionsMinimumDistance <= 0 {
				sub.SuggestionsMinimumDistance = 2
			}
			check := sub.Args
			sub.Args = func(cmd *cobra.Command, args []string) error {
				var err error
				if check != nil {
					err = check(cmd, args)
				}
				if err == nil || len(args) == 0 {
					return err
				}
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					return fmt.Errorf("%w; did you mean %s?", err, strings.Join(s, " or "))
				}
				return err
			}
		}
		suggestSubcommands(sub)
	}
}
