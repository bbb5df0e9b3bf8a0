// Package logging names the levels an operator gives to -log-level:
// error, warn, info, debug, and trace, the wire trace of pop3.LevelTrace
// (every command and status line, secrets redacted).
package logging

import (
	"log/slog"
	"strings"

	"github.com/pop3gw/gateway/pop3"
)

// LevelTrace is the level of the POP3 wire trace, below Debug.
const LevelTrace = pop3.LevelTrace

// ParseLevel reads a level name: trace, debug, info, warn or error, in any
// case, or a name slog.Level reads, such as "DEBUG-2".
func ParseLevel(name string) (slog.Level, error) {
	if strings.EqualFold(name, "trace") {
		return LevelTrace, nil
	}
	var l slog.Level
	err := l.UnmarshalText([]byte(name))
	return l, err
}

// ReplaceAttr is a slog.HandlerOptions.ReplaceAttr that writes the trace
// level as TRACE rather than slog's DEBUG-4.
func ReplaceAttr(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.LevelKey && len(groups) == 0 {
		if l, ok := a.Value.Any().(slog.Level); ok && l == LevelTrace {
			a.Value = slog.StringValue("TRACE")
		}
	}
	return a
}
