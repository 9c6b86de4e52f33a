package config

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem with a configuration: where it is and what is wrong.
// Loading and validation return every problem found, joined with
// errors.Join; use errors.As to get at the first, or range over
// Unwrap() []error for all.
type Error struct {
	// File is the configuration's name as given to the loader; empty for
	// a configuration built in code.
	File string
	// Line is the 1-based line the problem is on, or 0 when there is none
	// (a missing field, a default that does not fit).
	Line int
	// Field is the path of the field, for example backends[1].uri; empty
	// for problems with the document as a whole.
	Field string
	// Err says what is wrong.
	Err error
}

// Error formats the problem as "FILE: FIELD: MESSAGE (line N)", leaving out
// what is unknown; without a field the line comes first, as YAML syntax
// errors are usually reported: "FILE: line N: MESSAGE".
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File + ": ")
	}
	if e.Field == "" && e.Line > 0 {
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("invalid")
	}
	if e.Field != "" && e.Line > 0 {
		b.WriteString(" (line " + strconv.Itoa(e.Line) + ")")
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// problems collects configuration errors.
type problems []*Error

// add records a problem with field.
func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, &Error{Field: field, Err: fmt.Errorf(format, args...)})
}

// at records a problem at a line of the document.
func (p *problems) at(line int, field string, err error) {
	*p = append(*p, &Error{Line: line, Field: field, Err: err})
}

// join names file in every problem, takes lines from the document for
// those that lack one, orders them by line and joins them.
func (p problems) join(file string, lines map[string]int) error {
	if len(p) == 0 {
		return nil
	}
	for _, e := range p {
		e.File = file
		if e.Line == 0 && e.Field != "" {
			e.Line = lineOf(lines, e.Field)
		}
	}
	// Problems without a line (missing fields) come after those with one,
	// each group in the order they were found.
	slices.SortStableFunc(p, func(a, b *Error) int {
		if (a.Line == 0) != (b.Line == 0) {
			return cmp.Compare(b.Line, a.Line) // the zero line sorts last
		}
		return cmp.Compare(a.Line, b.Line)
	})
	var errs []error
	for i, e := range p {
		if i == maxProblems {
			errs = append(errs, &Error{File: file, Err: fmt.Errorf("%d more problems not shown", len(p)-maxProblems)})
			break
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// maxProblems bounds the problems reported at once: past a hundred, the
// file is likely not a configuration at all.
const maxProblems = 100

// lineOf finds the line of field in the document, or of its nearest parent
// that appears there: a missing tls.key is reported at the tls section.
func lineOf(lines map[string]int, field string) int {
	for field != "" {
		if l, ok := lines[field]; ok {
			return l
		}
		i := strings.LastIndexAny(field, ".[")
		if i < 0 {
			return 0
		}
		field = field[:i]
	}
	return 0
}
