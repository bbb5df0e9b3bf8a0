package pop3

import (
	"context"
	"log/slog"
	"strings"
)

// LevelTrace is the slog level of the wire trace, below Debug: every
// command line received and every status line sent, with passwords and
// SASL payloads replaced by "<redacted>". Message bodies and the lines of
// multi-line responses (CAPA, LIST, UIDL, RETR, TOP) are not traced. The
// name given to USER is traced as sent: at this level, as at Debug, names
// that did not log in are logged.
const LevelTrace = slog.LevelDebug - 4

// redacted stands in for a secret in the wire trace.
const redacted = "<redacted>"

// traceLine logs one line of the dialogue at LevelTrace.
func (c *conn) traceLine(direction, line string) {
	c.log.Log(context.Background(), LevelTrace, direction, "line", line)
}

// traceCommand logs a command line received, its secrets redacted.
func (c *conn) traceCommand(line string) {
	if c.tracing {
		c.traceLine("recv", redactCommand(line))
	}
}

// redactCommand replaces the secrets of a command line: the argument of
// PASS (RFC 1939 §7), and the initial response of AUTH (RFC 5034 §4). The
// verb is matched as the command table matches it, and also when a tab or
// nothing at all separates it from its argument, so a malformed PASS line
// never shows its password either.
func redactCommand(line string) string {
	verb, arg, hasArg := strings.Cut(line, " ")
	if i := strings.IndexByte(verb, '\t'); i >= 0 {
		verb, arg, hasArg = line[:i], line[i+1:], true
	}
	if !hasArg && len(verb) > 4 {
		verb, arg, hasArg = line[:4], line[4:], true
	}
	switch {
	case isVerb(verb, "PASS"):
		if hasArg {
			return verb + " " + redacted
		}
	case isVerb(verb, "AUTH"):
		// AUTH, AUTH mechanism, or AUTH mechanism initial-response.
		if fields := strings.Fields(arg); len(fields) > 1 {
			return verb + " " + fields[0] + " " + redacted
		}
	}
	return line
}

// isVerb tells whether verb is name, in any case.
func isVerb(verb, name string) bool {
	return strings.ToUpper(verb) == name || strings.EqualFold(verb, name)
}

// redactResponse is what the wire trace shows of a SASL response line:
// its cancellation, "*" (RFC 5034 §4), or that a payload was sent.
func redactResponse(line string) string {
	if line == "*" {
		return line
	}
	return redacted
}
