package pop3

import "fmt"

// CommitResult says what Commit did with the messages marked deleted.
type CommitResult struct {
	// Removed counts the messages removed from the mailbox.
	Removed int
	// Kept counts the messages left on the server (a maildrop configured
	// to keep mail) but never listed to this maildrop again.
	Kept int
}

// quitSummary tells the client what QUIT did with its deletions, so a
// message left on the server is never reported as deleted.
func quitSummary(r CommitResult) string {
	switch {
	case r.Kept == 0:
		return "messages deleted."
	case r.Removed == 0:
		return fmt.Sprintf("%s hidden, kept on the server.", messages(r.Kept))
	}
	return fmt.Sprintf("%s deleted, %s hidden and kept on the server.", messages(r.Removed), messages(r.Kept))
}

func messages(n int) string {
	if n == 1 {
		return "1 message"
	}
	return fmt.Sprintf("%d messages", n)
}
