package submission

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Mailer sends whole messages through an API in place of an SMTP
// upstream: Microsoft Graph's sendMail is one. Such an API takes a
// message in one request and answers once, so the relay reads DATA whole
// (up to MaxSize), then sends it, and answers the client only after the
// API answered: still no spool.
//
// Such an API sends to the recipients the message's headers name, not to
// an envelope; see reconcile for how the two are made to agree.
type Mailer interface {
	// MaxSize is the largest message, in octets, Send takes.
	MaxSize() int64
	// Send sends msg. An error that is not a *MailerRefusal is taken as
	// temporary: the message was not sent.
	Send(ctx context.Context, msg []byte) error
}

// MailerChecker is a Mailer that can tell, with a request that sends
// nothing, whether it can be reached with the account's credentials, for
// `gateway check`.
type MailerChecker interface {
	Check(ctx context.Context) error
}

// MailerRefusal is a Mailer's answer that it did not take a message.
type MailerRefusal struct {
	Status    int    // the API's status (HTTP)
	Code      string // the API's error code, printable ASCII; may be shown to the client
	Temporary bool   // throttled or unavailable: the client should try later
	// RetryAfter is the wait the API asked for, 0 when none.
	RetryAfter time.Duration
}

func (r *MailerRefusal) Error() string {
	return fmt.Sprintf("submission: refused by the API: status %d %s", r.Status, r.Code)
}

// mailerReply is the client's reply to a Mailer's refusal. RFC 5321
// §4.2.1: 4yz for a refusal that may pass, 5yz for one that will not;
// RFC 3463 codes for why.
func mailerReply(err error, limit int64) *smtp.SMTPError {
	// Only a refusal of this message as it stands is permanent: bad
	// content (400), not permitted (403), too large (413). Any other
	// status, throttling and authentication included, may pass.
	var r *MailerRefusal
	if !errors.As(err, &r) || r.Temporary || (r.Status != 400 && r.Status != 403 && r.Status != 413) {
		text := "Upstream busy or unavailable; nothing was sent, please try again later"
		if r != nil && r.RetryAfter > 0 {
			text += fmt.Sprintf(" (the upstream asked to wait %d seconds)", int64((r.RetryAfter+time.Second-1)/time.Second))
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: text}
	}
	reason := ""
	if r.Code != "" {
		reason = " (" + r.Code + ")"
	}
	switch r.Status {
	case 413:
		return tooBigFor(limit)
	case 403:
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Message refused by the upstream: not permitted" + reason}
	default: // 400
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message refused by the upstream" + reason}
	}
}

// tooBigFor is RFC 5321 §4.5.3.1.10's 552 naming the limit, which the
// client cannot learn from EHLO SIZE when the limit is the API's.
func tooBigFor(limit int64) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4},
		Message: fmt.Sprintf("Message too big for the upstream (limit %d octets)", limit)}
}

var (
	errHeaderRecipient  = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "A To, Cc or Bcc header names a recipient not given in RCPT TO; the upstream sends to the headers' recipients, so it would be sent to them too"}
	errRecipientHeaders = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "A To, Cc or Bcc header cannot be read as addresses (RFC 5322 section 3.4)"}
)

// reconcile makes the message's recipient headers agree with the
// envelope, for a Mailer that sends to the headers' recipients (Graph's
// sendMail: user-sendmail, "recipients ... in the MIME content"):
//
//   - An envelope recipient no header names (a Bcc the client kept out of
//     the message, RFC 5321 §7.2, or a list expansion) would not get the
//     message: it is added in a Bcc header, which the API strips from the
//     copies it delivers (RFC 5322 §3.6.3). An existing Bcc header is
//     replaced by one naming its addresses and the added ones.
//   - A header recipient the envelope does not name would get a message
//     the client never sent to it (RFC 5321 §3.3: the envelope, not the
//     headers, says where mail goes): the message is refused. Real
//     clients put every header recipient in the envelope.
//
// msg has CRLF line endings. The rest of the message is left as it is.
func reconcile(msg []byte, envelope []string) ([]byte, error) {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		// No header section at all (or an unreadable one): nothing names
		// a recipient.
		m = &mail.Message{Header: mail.Header{}}
	}
	inEnvelope := make(map[string]bool, len(envelope))
	for _, a := range envelope {
		inEnvelope[strings.ToLower(a)] = true
	}
	named := make(map[string]bool)
	var bcc []string
	for _, field := range []string{"To", "Cc", "Bcc"} {
		if len(m.Header[field]) == 0 || strings.TrimSpace(m.Header.Get(field)) == "" {
			continue
		}
		list, err := m.Header.AddressList(field)
		if err != nil {
			return nil, errRecipientHeaders
		}
		for _, a := range list {
			addr := strings.ToLower(a.Address)
			if !inEnvelope[addr] {
				return nil, errHeaderRecipient
			}
			named[addr] = true
			if field == "Bcc" {
				bcc = append(bcc, a.Address)
			}
		}
	}
	var missing []string
	for _, a := range envelope {
		if !named[strings.ToLower(a)] {
			named[strings.ToLower(a)] = true
			missing = append(missing, a)
		}
	}
	if len(missing) == 0 {
		return msg, nil
	}
	out := make([]byte, 0, len(msg)+64)
	out = append(out, "Bcc: "...)
	for i, a := range append(bcc, missing...) {
		if i > 0 {
			out = append(out, ",\r\n "...)
		}
		out = append(out, a...)
	}
	out = append(out, "\r\n"...)
	return append(out, withoutField(msg, "Bcc")...), nil
}

// withoutField returns msg without the header fields of that name,
// continuation lines included (RFC 5322 §2.2.3).
func withoutField(msg []byte, name string) []byte {
	var out []byte
	skipping := false
	rest := msg
	for len(rest) > 0 {
		line := rest
		if i := bytes.Index(rest, []byte("\r\n")); i >= 0 {
			line = rest[:i+2]
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			// The blank line ends the header section.
			return append(out, rest...)
		}
		folded := line[0] == ' ' || line[0] == '\t'
		if !folded {
			field, _, ok := bytes.Cut(line, []byte(":"))
			skipping = ok && strings.EqualFold(strings.TrimSpace(string(field)), name)
		}
		if !skipping {
			out = append(out, line...)
		}
		rest = rest[len(line):]
	}
	return out
}

// checkToken gets the account's token at login, as dial does for an SMTP
// upstream, so that an account the operator has not authorised is
// refused at AUTH.
func checkToken(ctx context.Context, acct *Account) error {
	if acct.Token == nil {
		return nil
	}
	_, err := acct.Token(ctx, false)
	return err
}

// mailAPI starts a transaction for a Mailer: the sender and hourly rules
// are checked already, and nothing is asked upstream before DATA.
func (s *session) mailAPI(opts *smtp.MailOptions) error {
	if opts.UTF8 {
		s.srv.observeMessage("refused")
		return errSMTPUTF8
	}
	// RFC 1870 §6: a declared SIZE over the limit is refused at MAIL.
	if limit := s.account.Mailer.MaxSize(); opts.Size > limit {
		s.srv.observeMessage("too-big")
		return tooBigFor(limit)
	}
	s.inMail, s.rcpts, s.rcptTo = true, 0, nil
	return nil
}

// dataAPI reads the message whole, up to the Mailer's limit, with its
// line endings made CRLF as for an SMTP upstream, makes its headers agree
// with the envelope, sends it and answers with the Mailer's answer.
func (s *session) dataAPI(r io.Reader) error {
	s.inMail = false
	mailer := s.account.Mailer
	limit := mailer.MaxSize()
	var buf bytes.Buffer
	src := &readCounter{r: r}
	body := &sizeLimit{w: &buf, left: limit}
	lw := newLineWriter(body, nil, false)
	_, err := io.Copy(lw, src)
	if err == nil {
		err = lw.Close(body)
	}
	switch {
	case errors.Is(src.err, smtp.ErrDataTooLarge):
		// go-smtp stopped at the SIZE EHLO offered.
		s.srv.observeMessage("too-big")
		return tooBigFor(min(limit, cmp.Or(s.srv.Capabilities.Size, limit)))
	case src.err != nil:
		s.log.Info("message not finished by the client: nothing sent", "err", src.err)
		s.srv.observeMessage("client-aborted")
		if isSMTPError(src.err) {
			return src.err
		}
		return errClientData
	case errors.Is(err, errTooBig):
		s.log.Info("message too big for the upstream: nothing sent", "limit", limit)
		s.srv.observeMessage("too-big")
		return tooBigFor(limit)
	case err != nil:
		return err
	}
	msg, err := reconcile(buf.Bytes(), s.rcptTo)
	if err != nil {
		s.log.Info("recipient headers disagree with the envelope: nothing sent", "err", err)
		s.srv.observeMessage("refused")
		return err
	}
	if int64(len(msg)) > limit {
		s.srv.observeMessage("too-big")
		return tooBigFor(limit)
	}
	if err := mailer.Send(s.ctx, msg); err != nil {
		reply := mailerReply(err, limit)
		s.log.Warn("upstream did not take the message", "err", err, "reply", reply.Code)
		s.srv.observeMessage(fmt.Sprintf("upstream-%dxx", reply.Code/100))
		return reply
	}
	s.srv.rate.add(s.ctx, s.account.Key)
	s.srv.observeMessage("relayed")
	s.log.Info("message relayed", "octets", len(msg), "recipients", s.rcpts,
		"line_endings_repaired", lw.repaired, "bcc_added", len(msg) != buf.Len())
	return nil
}
