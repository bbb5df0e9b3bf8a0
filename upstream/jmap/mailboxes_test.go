package jmap

import "testing"

// Mailboxes names a Mailbox by its path from the top, the inbox "INBOX";
// Login finds it by that path or by the server's own names.
func TestMailboxPaths(t *testing.T) {
	ptr := func(s string) *string { return &s }
	list := []mailboxJSON{
		{ID: "i", Name: "Inbox", Role: ptr("inbox")},
		{ID: "w", Name: "Work", ParentID: ptr("i")},
		{ID: "q", Name: "Q1", ParentID: ptr("w")},
		{ID: "a", Name: "Archive", Role: ptr("archive")},
		{ID: "x", Name: "Loop", ParentID: ptr("y")},
		{ID: "y", Name: "Pool", ParentID: ptr("x")},
	}
	paths := mailboxPaths(list)
	for id, want := range map[string]string{"i": "INBOX", "w": "INBOX/Work", "q": "INBOX/Work/Q1", "a": "Archive"} {
		if paths[id] != want {
			t.Errorf("path of %s: %q, want %q", id, paths[id], want)
		}
	}
	for path, want := range map[string]string{"INBOX/Work/Q1": "q", "Inbox/Work": "w", "Archive": "a", "Work": "", "INBOX/Q1": ""} {
		if got := byPath(list, path); got != want {
			t.Errorf("byPath(%q) = %q, want %q", path, got, want)
		}
	}
	// A parent chain that loops ends; its path is whatever it reached.
	if paths["x"] == "" {
		t.Error("a looping parent chain has no path")
	}
}
