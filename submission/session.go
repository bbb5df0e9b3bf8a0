package submission

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// LevelTrace is the slog level of the command trace, below Debug: each
// command the session receives and each reply it decides, with the AUTH
// exchange reduced to its mechanism. Message bodies are not traced.
const LevelTrace = slog.LevelDebug - 4

// Replies of the relay's own rules. Each names the rule that refused.
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	// RFC 3207 §4: 530 to a command that needs TLS first.
	errNeedTLS = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errSender  = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Sender address not allowed for this login (rule: allowed senders)"}
	// RFC 5321 §4.5.3.1.10: 452 for too many recipients.
	errRecipients      = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients (rule: limits.max_recipients)"}
	errRate            = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Too many messages this hour, please try again later (rule: limits.messages_per_hour)"}
	errSMTPUTF8        = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "SMTPUTF8 is not supported by the upstream"}
	errTooBig          = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big for the upstream"}
	errTooManySessions = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many sessions for this user, please try again later (rule: limits.sessions_per_user)"}
	errUpstream        = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Upstream connection lost; nothing was sent, please try again"}
	// A message with a line over go-smtp's limit would meet it again:
	// a permanent failure.
	errLineTooLong = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: fmt.Sprintf("Message has a line longer than %d octets; nothing was sent", maxLineLength)}
	// A message the client stopped sending (a timeout, a reset) is a
	// temporary failure: the client may send it again, whole.
	errClientData = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Message not received in full; nothing was sent, please try again"}
)

type backend struct{ srv *Server }

// NewSession starts a session at the client's first EHLO, and again after
// STARTTLS, which forgets everything before it (RFC 3207 §4.2).
func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	cc := clientOf(c.Conn())
	if cc == nil {
		return nil, errors.New("submission: connection of unknown type")
	}
	_, isTLS := c.TLSConnectionState()
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{
		srv:    b.srv,
		cc:     cc,
		tls:    isTLS,
		ctx:    ctx,
		cancel: cancel,
		log:    b.srv.logger().With("conn", cc.id, "remote", c.Conn().RemoteAddr().String(), "door", "submission"),
	}
	s.tracing = s.log.Enabled(ctx, LevelTrace)
	s.trace("EHLO "+c.Hostname(), nil)
	return s, nil
}

// session is one client's SMTP session after EHLO.
type session struct {
	srv     *Server
	cc      *clientConn
	tls     bool
	ctx     context.Context
	cancel  context.CancelFunc
	log     *slog.Logger
	tracing bool

	account   *Account
	up        *upstreamConn
	authFails int
	userKey   string // counted in Server.users while logged in

	// The transaction under way.
	inMail bool
	rcpts  int
	size   int64 // upstream SIZE, 0: none announced
	// rcptTo are the transaction's recipients, kept for a Mailer.
	rcptTo []string
}

func (s *session) trace(cmd string, reply error) {
	if !s.tracing {
		return
	}
	s.log.Log(s.ctx, LevelTrace, "recv", "line", cmd)
	if reply == nil {
		return
	}
	var se *smtp.SMTPError
	if errors.As(reply, &se) {
		s.log.Log(s.ctx, LevelTrace, "send", "line", fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message))
	}
}

// authAllowed tells whether credentials may be sent on this connection:
// over TLS, from loopback, or anywhere when the server allows it
// (RFC 3207 §4, RFC 4954 §4). An address from a PROXY header is the
// balancer's word, never loopback.
func (s *session) authAllowed() bool {
	if s.tls || s.srv.AllowInsecureAuth {
		return true
	}
	if s.cc.Proxied() || s.srv.RequireTLSOnLoopback {
		return false
	}
	if tcp, ok := s.cc.Conn.RemoteAddr().(*net.TCPAddr); ok {
		return tcp.IP.IsLoopback()
	}
	return false
}

// AuthMechanisms lists PLAIN and LOGIN where AUTH is allowed; elsewhere
// EHLO offers no AUTH at all, only STARTTLS.
func (s *session) AuthMechanisms() []string {
	if !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	method := "AUTH " + strings.ToUpper(mech)
	if !s.authAllowed() {
		s.trace(method, errNeedTLS)
		return nil, errNeedTLS
	}
	s.trace(method, nil)
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			// Acting for another user is not supported (RFC 4616 §2).
			if identity != "" && identity != user {
				return s.login("", "", method)
			}
			return s.login(user, pass, method)
		}), nil
	case sasl.Login:
		return &loginServer{done: func(user, pass string) error { return s.login(user, pass, method) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks the credentials with the backend, then logs in upstream
// with the account's own credentials: for a passthrough login that is the
// only check, and for a mapped user it proves the upstream account before
// the client sends anything. A refusal looks and takes the same whatever
// refused it.
func (s *session) login(user, pass, method string) error {
	valid := user != "" && !strings.ContainsAny(user, "\x00\r\n")
	key := ""
	if valid {
		key = s.srv.canonicalName(user)
	}
	ip := s.cc.ip
	if g := s.srv.Guard; g != nil {
		if d := g.Reserve(s.ctx, ip, key); d > 0 {
			if err := sleep(s.ctx, d); err != nil {
				return errTempAuth
			}
		}
	}
	checked := time.Now()
	refuse := func(reason string) error {
		s.srv.observeLogin(method, "auth-failed")
		s.log.Info("login refused", "method", method, "reason", reason)
		s.log.Debug("login refused", "user", user)
		if g := s.srv.Guard; g != nil {
			g.Failed(s.ctx, ip, key)
		}
		sleep(s.ctx, time.Until(checked.Add(s.srv.MinRefusalTime)))
		if s.authFails++; s.authFails >= s.srv.maxAuthFailures() {
			// The reply is written before the connection closes.
			time.AfterFunc(100*time.Millisecond, func() { s.cc.Close() })
		}
		return ErrAuthFailed
	}
	if !valid || strings.ContainsAny(pass, "\x00\r\n") {
		return refuse("malformed credentials")
	}
	if !s.srv.admitUser(key) {
		s.srv.observeLogin(method, "too-many-sessions")
		s.log.Info("login refused", "method", method, "reason", "too many sessions")
		return errTooManySessions
	}
	admitted := false
	defer func() {
		if !admitted {
			s.srv.releaseUser(key)
		}
	}()
	acct, err := s.srv.Backend.Login(s.ctx, &LoginInfo{
		Username: user, Key: key, Password: pass,
		Remote: s.cc.Conn.RemoteAddr(), TLS: s.tls, Method: method,
	})
	if errors.Is(err, ErrAuthFailed) {
		return refuse("credentials")
	}
	if err != nil {
		s.srv.observeLogin(method, "error")
		s.log.Warn("login failed", "method", method, "err", err)
		return errTempAuth
	}
	log := s.log.With("upstream", acct.Upstream.Name)
	var up *upstreamConn
	if acct.Mailer != nil {
		err = checkToken(s.ctx, acct)
	} else {
		up, err = dial(s.ctx, acct)
	}
	switch {
	case errors.Is(err, errUpstreamAuth):
		log.Info("upstream refused the credentials", "err", err)
		return refuse("upstream refused the credentials")
	case errors.Is(err, ErrAuthFailed):
		// The account's token cannot be had: the operator must act.
		log.Error("upstream login impossible", "err", err)
		return refuse("no upstream token")
	}
	if err != nil {
		s.srv.observeLogin(method, "upstream-unavailable")
		log.Warn("upstream unavailable", "err", err)
		return errTempAuth
	}
	if g := s.srv.Guard; g != nil {
		g.Succeeded(s.ctx, ip, key)
	}
	s.cc.loggedIn.Store(true)
	admitted, s.userKey = true, key
	s.account, s.up = acct, up
	s.log = log.With("user", user)
	s.log.Info("logged in", "method", method)
	s.srv.observeLogin(method, "ok")
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Mail starts a transaction: the sender must be one of the login's
// addresses, the account within its hourly allowance, and the upstream
// must accept the sender too.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	err := s.mail(from, opts)
	s.trace("MAIL FROM:<"+from+">", err)
	return err
}

func (s *session) mail(from string, opts *smtp.MailOptions) error {
	if s.account == nil {
		return errAuthRequired
	}
	if !s.senderAllowed(from) {
		s.log.Info("sender refused", "from", from)
		s.srv.observeMessage("sender-refused")
		return errSender
	}
	if !s.srv.rate.allow(s.ctx, s.account.Key) {
		s.log.Warn("hourly message limit reached", "limit", s.srv.rate.perHour)
		s.srv.observeMessage("rate-limited")
		return errRate
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	if s.account.Mailer != nil {
		return s.mailAPI(opts)
	}
	if err := s.ensureUpstream(); err != nil {
		return err
	}
	if opts.UTF8 {
		if ok, _ := s.up.Extension("SMTPUTF8"); !ok {
			s.srv.observeMessage("refused")
			return errSMTPUTF8
		}
	}
	s.size = 0
	if n, ok := s.up.MaxMessageSize(); ok && n > 0 {
		s.size = int64(n)
		if opts.Size > s.size {
			s.srv.observeMessage("too-big")
			return errTooBig
		}
	}
	upOpts := &smtp.MailOptions{Size: opts.Size, UTF8: opts.UTF8, Body: opts.Body}
	err := s.up.Mail(from, upOpts)
	if err != nil && !isSMTPError(err) {
		// The idle upstream connection may have been closed by the
		// upstream since the last message: one new one.
		s.dropUpstream()
		if err = s.ensureUpstream(); err != nil {
			return err
		}
		err = s.up.Mail(from, upOpts)
	}
	if err != nil {
		s.srv.observeMessage(outcome(err))
		return s.carry(err, "MAIL", "Sender refused by the upstream")
	}
	s.inMail = true
	return nil
}

// senderAllowed: the envelope sender must be one of the account's
// addresses. The null reverse-path (bounces) is not a device's to send.
func (s *session) senderAllowed(from string) bool {
	if from == "" {
		return false
	}
	for _, a := range s.account.Senders {
		if strings.EqualFold(a, from) {
			return true
		}
	}
	return false
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	err := s.rcpt(to)
	s.trace("RCPT TO:<"+to+">", err)
	return err
}

func (s *session) rcpt(to string) error {
	if s.account == nil {
		return errAuthRequired
	}
	if !s.inMail || (s.up == nil && s.account.Mailer == nil) {
		// The upstream connection was lost in this transaction.
		return errUpstream
	}
	if max := s.srv.maxRecipients(); max > 0 && s.rcpts >= max {
		s.log.Info("too many recipients", "limit", max)
		if s.rcpts == max {
			s.srv.observeMessage("too-many-recipients")
		}
		return errRecipients
	}
	if s.account.Mailer != nil {
		s.rcptTo = append(s.rcptTo, to)
		s.rcpts++
		return nil
	}
	if err := s.up.Rcpt(to, nil); err != nil {
		return s.carry(err, "RCPT", "Recipient refused by the upstream")
	}
	s.rcpts++
	return nil
}

// Data streams the message to the upstream as it arrives and answers
// only with the upstream's answer to the final "." (no spool). A message
// the client does not finish, or that the upstream stops reading, is cut
// off upstream before its terminator, so the upstream delivers nothing.
func (s *session) Data(r io.Reader) error {
	err := s.data(r)
	s.trace("DATA", err)
	return err
}

func (s *session) data(r io.Reader) error {
	if s.account == nil {
		return errAuthRequired
	}
	s.cc.inData.Store(true)
	defer s.cc.inData.Store(false)
	if _, chunked := r.(*io.PipeReader); !chunked {
		// DATA, not BDAT: go-smtp hands BDAT's counted chunks over
		// through a pipe, and they are not dot-stuffed.
		repair := newDataRepair(r, s.cc)
		r = repair
		s.cc.startPauses()
		defer func() {
			// What the relay did not read of the message is read here,
			// where its end is found as the RFC says, not by go-smtp
			// after this returns.
			io.Copy(io.Discard, repair)
			s.cc.stopPauses()
		}()
	}
	if s.account.Mailer != nil && s.inMail && s.rcpts > 0 {
		return s.dataAPI(r)
	}
	if !s.inMail || s.rcpts == 0 || s.up == nil {
		return errUpstream
	}
	s.inMail = false
	w, err := s.up.Data()
	if err != nil {
		s.srv.observeMessage(outcome(err))
		return s.carry(err, "DATA", "Message refused by the upstream")
	}
	buf := bodyBuffers.Get().(*bodyBuffer)
	defer bodyBuffers.Put(buf)
	src := &readCounter{r: r}
	lw := newLineWriter(s.up.wire, buf.out, true)
	var dst io.Writer = lw
	if s.size > 0 {
		dst = &sizeLimit{w: lw, left: s.size}
	}
	_, err = io.CopyBuffer(dst, src, buf.in)
	buf.out = lw.buf // grown, perhaps
	if err == nil {
		err = lw.Close(w)
	}
	if err != nil {
		s.dropUpstream()
		switch {
		case src.err != nil:
			// The client is gone, silent or broke the DATA rules.
			s.log.Info("message not finished by the client: nothing sent", "err", src.err)
			s.srv.observeMessage("client-aborted")
			if isSMTPError(src.err) {
				return src.err // go-smtp's own reply, such as too big
			}
			if errors.Is(src.err, smtp.ErrTooLongLine) {
				return errLineTooLong // go-smtp then closes the connection
			}
			// go-smtp would answer any other error with a 554 carrying
			// its text: a permanent failure, and connection details.
			return errClientData
		case errors.Is(err, errTooBig):
			s.srv.observeMessage("too-big")
			return errTooBig
		}
		s.log.Warn("upstream lost during DATA: nothing sent", "err", err)
		s.srv.observeMessage("upstream-lost")
		return errUpstream
	}
	if err := w.Close(); err != nil {
		if !isSMTPError(err) {
			// The upstream may or may not have taken the message: the
			// client is told to try again, which may send it twice.
			s.dropUpstream()
			s.log.Warn("no reply from the upstream after the message", "err", err)
			s.srv.observeMessage("upstream-lost")
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "No reply from the upstream; the message may not have been sent"}
		}
		s.srv.observeMessage(outcome(err))
		// RFC 5321 §4.1.1.4 ends the transaction with the reply to the
		// final ".", but Postfix keeps it after an end-of-data refusal
		// (503 to the next MAIL): RSET makes sure.
		if rerr := s.up.Reset(); rerr != nil {
			s.dropUpstream()
		}
		return s.carry(err, "DATA", "Message refused by the upstream")
	}
	s.srv.rate.add(s.ctx, s.account.Key)
	s.srv.observeMessage("relayed")
	s.log.Info("message relayed", "octets", src.n, "recipients", s.rcpts, "line_endings_repaired", lw.repaired)
	return nil
}

// carry gives the client the upstream's reply code and enhanced status
// code (RFC 3463), 4xx staying 4xx and 5xx staying 5xx, with text of the
// gateway's own: upstream text never reaches a client.
func (s *session) carry(err error, cmd, text string) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		s.dropUpstream()
		s.log.Warn("upstream failed", "command", cmd, "err", err)
		return errUpstream
	}
	s.log.Info("upstream refused", "command", cmd, "code", se.Code, "enhanced", se.EnhancedCode)
	code, ec := se.Code, se.EnhancedCode
	if code < 400 || code > 599 {
		code, ec = 451, smtp.EnhancedCode{4, 0, 0}
	}
	if ec == smtp.NoEnhancedCode || ec[0] != code/100 {
		ec = smtp.EnhancedCodeNotSet
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: ec, Message: text}
}

func isSMTPError(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se)
}

func outcome(err error) string {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("upstream-%dxx", se.Code/100)
	}
	return "upstream-lost"
}

func (s *session) ensureUpstream() error {
	if s.up != nil {
		return nil
	}
	up, err := dial(s.ctx, s.account)
	if err != nil {
		s.log.Warn("upstream unavailable", "err", err)
		s.srv.observeMessage("upstream-lost")
		return errUpstream
	}
	s.up = up
	return nil
}

func (s *session) dropUpstream() {
	if s.up != nil {
		s.up.abort()
		s.up = nil
	}
	s.inMail = false
	s.rcpts = 0
	s.rcptTo = nil
}

// Reset ends the transaction here and upstream (RFC 5321 §4.1.1.5).
func (s *session) Reset() {
	if s.inMail && s.up != nil {
		if err := s.up.Reset(); err != nil {
			s.dropUpstream()
		}
	}
	s.inMail = false
	s.rcpts = 0
	s.rcptTo = nil
}

// Logout ends the upstream session too.
func (s *session) Logout() error {
	if s.up != nil {
		s.up.Quit()
		s.up.Close()
		s.up = nil
	}
	if s.account != nil {
		s.srv.releaseUser(s.userKey)
		s.account = nil
	}
	s.cancel()
	return nil
}

// bodyBuffer is what one message's copy to the upstream needs: in, what
// is read from the client at a time (io.Copy's size, so that a message
// of up to 32 KiB goes upstream in one write), and out, where the line
// writer builds each write. Pooled: a session holds them only during
// DATA, and a relay at full speed allocates none per message.
type bodyBuffer struct{ in, out []byte }

var bodyBuffers = sync.Pool{New: func() any {
	return &bodyBuffer{in: make([]byte, 32<<10), out: make([]byte, 0, 36<<10)}
}}

// readCounter remembers the error of the client's side of a copy.
type readCounter struct {
	r   io.Reader
	n   int64
	err error
}

func (r *readCounter) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.n += int64(n)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// sizeLimit stops a message at the upstream's SIZE (RFC 1870 §6).
type sizeLimit struct {
	w    io.Writer
	left int64
}

func (l *sizeLimit) Write(b []byte) (int, error) {
	if int64(len(b)) > l.left {
		return 0, errTooBig
	}
	l.left -= int64(len(b))
	return l.w.Write(b)
}

// loginServer is the LOGIN mechanism (draft-murchison-sasl-login): the
// name and the password, each after a prompt.
type loginServer struct {
	step int
	user string
	done func(user, pass string) error
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if len(response) == 0 {
			return []byte("Username:"), false, nil
		}
		l.user = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 1:
		l.user = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.done(l.user, string(response))
	}
}
