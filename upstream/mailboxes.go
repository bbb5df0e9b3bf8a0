package upstream

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/emersion/go-imap/v2"
)

// MailboxName is a mailbox of the account as LIST gives it.
type MailboxName struct {
	Name string
	// Delim is the hierarchy delimiter (RFC 9051 §6.3.9), 0 when the
	// server has no hierarchy.
	Delim rune
}

// Mailboxes lists the account's mailboxes that can be selected (LIST ""
// "*", RFC 9051 §6.3.9), sorted by name. Mailboxes marked \Noselect or
// \NonExistent only hold others.
func (s *Session) Mailboxes(ctx context.Context) (_ []MailboxName, err error) {
	defer s.timed("list-mailboxes", time.Now(), &err)
	defer s.op(ctx)()
	data, err := s.client.List("", "*", nil).Collect()
	if err != nil {
		return nil, fmt.Errorf("upstream: listing mailboxes: %w", err)
	}
	var names []MailboxName
	for _, d := range data {
		if slices.Contains(d.Attrs, imap.MailboxAttrNoSelect) || slices.Contains(d.Attrs, imap.MailboxAttrNonExistent) {
			continue
		}
		names = append(names, MailboxName{Name: d.Mailbox, Delim: d.Delim})
	}
	slices.SortFunc(names, func(a, b MailboxName) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return names, nil
}
