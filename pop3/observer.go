package pop3

// Observer is told what the server does, for metrics. Its methods are
// called from every session's goroutine and must be quick.
type Observer interface {
	SessionStart()
	// SessionEnd reports the result also written in the session's last
	// log line: ok, disconnected, timeout, auth-failed, and so on.
	SessionEnd(result string)
	// Login reports a login attempt's outcome: ok, auth-failed, in-use,
	// temporary, too-many-sessions or error.
	Login(method, outcome string)
	// Command reports a command by its verb; unknown verbs as "unknown".
	Command(verb string)
	// ErrorReply reports an -ERR reply by the response code it was
	// given where it was made (RFC 2449 §8, RFC 3206); CodeNone when it
	// has none.
	ErrorReply(code Code)
	// Sent reports octets of message data sent by RETR and TOP.
	Sent(octets int64)
	// Deleted reports what QUIT did with the messages marked deleted.
	Deleted(r CommitResult)
}

// nopObserver stands in when Server.Observer is nil.
type nopObserver struct{}

func (nopObserver) SessionStart()        {}
func (nopObserver) SessionEnd(string)    {}
func (nopObserver) Login(string, string) {}
func (nopObserver) Command(string)       {}
func (nopObserver) ErrorReply(Code)      {}
func (nopObserver) Sent(int64)           {}
func (nopObserver) Deleted(CommitResult) {}

func (s *Server) observer() Observer {
	if s.Observer != nil {
		return s.Observer
	}
	return nopObserver{}
}

// loginOutcome names a refused login's error for Observer.Login.
func loginOutcome(e *Error) string {
	switch e.Code {
	case CodeAuth:
		return "auth-failed"
	case CodeInUse:
		return "in-use"
	case CodeSysTemp:
		return "temporary"
	}
	return "error"
}
