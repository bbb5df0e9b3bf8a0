package upstream

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
)

// Security is how the connection to the server is protected.
type Security string

const (
	SecurityImplicit Security = "implicit" // TLS from the first octet (port 993)
	SecurityStartTLS Security = "starttls" // STARTTLS before login (RFC 9051 §6.2.1)
	SecurityNone     Security = "none"     // cleartext; for loopback and tests
)

// Securities lists every Security, in the order the documentation gives
// them; the configuration's tls key takes these spellings.
var Securities = []Security{SecurityImplicit, SecurityStartTLS, SecurityNone}

// DefaultTimeout is Server.Timeout when it is zero, and the configuration's
// default for an upstream's timeout.
const DefaultTimeout = 60 * time.Second

// DefaultKeepConnection is how long a logged-in connection is kept after
// its session for the next login to the same mailbox, unless configured
// otherwise: long enough for a poller's next round, short enough that a
// revoked password stops working soon.
const DefaultKeepConnection = 60 * time.Second

// Server says where and how to reach an IMAP server.
type Server struct {
	Address  string
	Security Security
	// TLSConfig verifies the server; its ServerName defaults to the host of
	// Address.
	TLSConfig *tls.Config
	// Timeout bounds the connection set-up and, later, any wait for data
	// while a command is under way; DefaultTimeout when zero.
	Timeout time.Duration
	// SendClientIP tells the server, before logging in, the address of the
	// POP3 client a connection is for (Dial's context, see WithClient), by
	// IMAP ID x-originating-ip (RFC 2971), so that a server which trusts
	// the gateway (Dovecot's login_trusted_networks) penalises and logs
	// the client rather than the gateway.
	SendClientIP bool
	// Observe, when set, is told how long each operation took: connect,
	// login, select, list, list-changes, fetch (until the message starts
	// to arrive), fetch-batch and delete; err is nil on success.
	Observe func(op string, d time.Duration, err error)
}

// Session is one logged-in IMAP connection with a selected mailbox. Its
// methods must not be called concurrently.
type Session struct {
	client  *imapclient.Client
	conn    *watchdogConn
	split   *splitConn // under client: commands of the gateway's own
	address string     // host:port, for OAUTHBEARER
	observe func(op string, d time.Duration, err error)
	mailbox string
	info    Mailbox
	// The selected mailbox's UIDVALIDITY and UIDNEXT, which info carries
	// as its Epoch and State.
	uidValidity, uidNext uint32

	// A FETCH response for a UID that an earlier response of the same
	// command already answered (a flag update the server sent on its own,
	// then the body) is not given to the command by the IMAP client but to
	// strayFetch, which hands a body for the UID awaited to stray.
	awaiting atomic.Uint32
	stray    chan strayBody

	// idle is the IDLE command the connection waits in while it is kept
	// between sessions (see Idle); nil otherwise.
	idle *imapclient.IdleCommand
	// onChange is what Idle was given: called, from the IMAP client's
	// reader, when the server reports a change while the connection
	// idles.
	onChange atomic.Pointer[func()]
	// reported counts the message counts and expunges the server has
	// reported on its own, idling or not (see refreshSelected).
	reported atomic.Uint64
}

// strayBody is a body section that reached strayFetch, with the rest of
// its response.
type strayBody struct {
	msg  *imapclient.FetchMessageData
	body imapclient.FetchItemDataBodySection
}

// Dial connects to srv and waits for its greeting; with starttls it also
// negotiates TLS. The session must then log in.
func Dial(ctx context.Context, srv *Server) (_ *Session, err error) {
	if srv.Observe != nil {
		defer func(start time.Time) { srv.Observe("connect", time.Since(start), err) }(time.Now())
	}
	timeout := srv.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	host, _, err := net.SplitHostPort(srv.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream: bad address %q: %w", srv.Address, err)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if srv.TLSConfig != nil {
		tlsConfig = srv.TLSConfig.Clone()
	}
	if tlsConfig.ServerName == "" {
		tlsConfig.ServerName = host
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", srv.Address)
	if err != nil {
		return nil, fmt.Errorf("upstream: connect %s: %w", srv.Address, err)
	}
	var nc net.Conn = raw
	if srv.Security == SecurityImplicit {
		tc := tls.Client(raw, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("upstream: TLS with %s: %w", srv.Address, err)
		}
		nc = tc
	}
	wd := newWatchdogConn(nc, timeout)
	// Dialing is bounded by ctx as well as by the watchdog.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	wd.begin()
	defer wd.end()

	s := &Session{conn: wd, address: srv.Address, observe: srv.Observe, stray: make(chan strayBody, 1)}
	opts := &imapclient.Options{
		TLSConfig: tlsConfig,
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Fetch: s.strayFetch,
			// A message count or an expunge the server reports on its own
			// is counted (see refreshSelected), and while the connection
			// idles it is news for the pool (see Idle).
			Mailbox: func(data *imapclient.UnilateralDataMailbox) {
				if data.NumMessages != nil {
					s.reported.Add(1)
					s.changed()
				}
			},
			Expunge: func(uint32) {
				s.reported.Add(1)
				s.changed()
			},
		},
	}
	// The connection under the IMAP client is the gateway's too (see
	// splitConn), so the IMAP client must not wrap it in TLS itself:
	// STARTTLS is done here.
	var under net.Conn = wd
	addr, introduceClient := clientFrom(ctx)
	introduceClient = introduceClient && srv.SendClientIP
	if introduceClient || srv.Security == SecurityStartTLS {
		if !introduceClient {
			addr = netip.AddrPort{}
		}
		under, err = introduce(wd, srv.Security == SecurityStartTLS, tlsConfig, addr)
		if err != nil {
			raw.Close()
			if introduceClient {
				return nil, fmt.Errorf("upstream: introducing the client to %s: %w", srv.Address, err)
			}
			return nil, fmt.Errorf("upstream: STARTTLS with %s: %w", srv.Address, err)
		}
	}
	s.split = newSplitConn(under)
	client := imapclient.New(s.split, opts)
	if err := client.WaitGreeting(); err != nil {
		client.Close()
		return nil, fmt.Errorf("upstream: greeting from %s: %w", srv.Address, err)
	}
	if ctx.Err() != nil {
		client.Close()
		return nil, fmt.Errorf("upstream: connect %s: %w", srv.Address, ctx.Err())
	}
	s.client = client
	return s, nil
}

// strayFetch receives the FETCH responses no command claimed. A body for
// the UID a fetch awaits goes to that fetch, which then reads the rest of
// the response; everything else is read and dropped.
func (s *Session) strayFetch(msg *imapclient.FetchMessageData) {
	var uid imap.UID
	for item := msg.Next(); item != nil; item = msg.Next() {
		switch item := item.(type) {
		case imapclient.FetchItemDataUID:
			uid = item.UID
		case imapclient.FetchItemDataBodySection:
			if uid != 0 && uint32(uid) == s.awaiting.Load() {
				select {
				case s.stray <- strayBody{msg: msg, body: item}:
					return
				default:
				}
			}
		}
	}
}

// await makes uid the message whose stray body is wanted, dropping what a
// previous fetch left behind.
func (s *Session) await(uid uint32) {
	s.awaiting.Store(uid)
	for {
		select {
		case old := <-s.stray:
			for old.msg.Next() != nil {
			}
		default:
			return
		}
	}
}

// op brackets one exchange with the server: the watchdog runs, and a
// cancelled ctx closes the connection, which fails the pending command.
func (s *Session) op(ctx context.Context) (done func()) {
	s.conn.begin()
	stop := context.AfterFunc(ctx, func() { s.client.Close() })
	return func() {
		stop()
		s.conn.end()
	}
}

// timed reports an operation's duration to the Server's Observe.
func (s *Session) timed(op string, start time.Time, err *error) {
	if s.observe != nil {
		s.observe(op, time.Since(start), *err)
	}
}

// Login authenticates with AUTHENTICATE PLAIN where the server offers it,
// and LOGIN otherwise. Refused credentials give ErrAuthFailed.
func (s *Session) Login(ctx context.Context, username, password string) (err error) {
	defer s.timed("login", time.Now(), &err)
	defer s.op(ctx)()
	caps := s.client.Caps()
	if caps.Has(imap.CapLoginDisabled) {
		return errors.New("upstream: server refuses login on this connection (LOGINDISABLED): use tls implicit or starttls")
	}
	if caps.Has(imap.AuthCap(sasl.Plain)) {
		err = s.client.Authenticate(sasl.NewPlainClient("", username, password))
	} else {
		err = s.client.Login(username, password).Wait()
	}
	if err != nil {
		return classifyLoginError(err)
	}
	return nil
}

// classifyLoginError keeps the server's text for the logs, printable
// only: a control character in it could forge a log line.
func classifyLoginError(err error) error {
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo {
		switch ie.Code {
		case imap.ResponseCodeUnavailable, imap.ResponseCodeServerBug, imap.ResponseCodeLimit:
			return fmt.Errorf("upstream: login: %w", printableError{err})
		}
		return fmt.Errorf("%w: %s", ErrAuthFailed, printable(ie.Text))
	}
	return fmt.Errorf("upstream: login: %w", printableError{err})
}

// printableError is err with control characters left out of its text.
type printableError struct{ err error }

func (e printableError) Error() string { return printable(e.err.Error()) }
func (e printableError) Unwrap() error { return e.err }

// printable drops the control characters of s.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// Select opens the mailbox read-write. The Mailbox it reports has the
// UIDVALIDITY in decimal as its Epoch, and UIDNEXT with EXISTS as its
// State: under one UIDVALIDITY, the same UIDNEXT and count mean the same
// UIDs, since a new message raises UIDNEXT, an expunge lowers the count,
// and UIDs are never reused (RFC 9051 §2.3.1.1).
func (s *Session) Select(ctx context.Context, mailbox string) (_ *Mailbox, err error) {
	defer s.timed("select", time.Now(), &err)
	defer s.op(ctx)()
	data, err := s.client.Select(mailbox, nil).Wait()
	if err != nil {
		return nil, fmt.Errorf("upstream: select %q: %w", mailbox, err)
	}
	s.mailbox = mailbox
	s.uidValidity, s.uidNext = data.UIDValidity, uint32(data.UIDNext)
	s.info = Mailbox{
		Name:     mailbox,
		Epoch:    strconv.FormatUint(uint64(data.UIDValidity), 10),
		State:    imapState(s.uidNext, data.NumMessages),
		Messages: int(data.NumMessages),
	}
	s.split.setMailboxSize(s.info.Messages)
	return &s.info, nil
}

// Refresh checks the connection and reports the mailbox's state now: on
// a connection that has the mailbox selected, idling or not, from a
// STATUS of it where the answer agrees with what the server has said on
// the connection (see refreshSelected), otherwise by selecting the
// mailbox again.
func (s *Session) Refresh(ctx context.Context) (Mailbox, error) {
	if s.mailbox != "" && s.client.Mailbox() != nil {
		mb, ok, err := s.refreshSelected(ctx)
		if err != nil {
			return Mailbox{}, err
		}
		if ok {
			return mb, nil
		}
	}
	mb, err := s.Select(ctx, s.mailbox)
	if err != nil {
		return Mailbox{}, err
	}
	return *mb, nil
}

// refreshSelected ends IDLE, if the connection idles, and asks for
// UIDVALIDITY, UIDNEXT and MESSAGES of the selected mailbox (RFC 9051
// §6.3.11 allows STATUS on it), DONE, NOOP and STATUS going out together.
// A SELECT would cost the same answer, but a maildir server such as
// Dovecot opens the mailbox again for it, which costs time linear in the
// mailbox even when the connection has already seen every change. The
// answer is taken only if the UIDVALIDITY is the selected one and
// MESSAGES is the count the server's EXISTS and EXPUNGE responses left
// (RFC 9051 §7.4.1, §7.5.1); ok is false otherwise, and the caller
// selects the mailbox again. The listing merged from it is checked as
// after a SELECT.
func (s *Session) refreshSelected(ctx context.Context) (_ Mailbox, ok bool, err error) {
	defer s.timed("select", time.Now(), &err)
	defer s.op(ctx)()
	waitIdle := s.stopIdle()
	// NOOP first: a server may answer STATUS on the selected mailbox from
	// this connection's own view (RFC 9051 §6.3.11 warns it may be out of
	// date), and Dovecot does, so a change the server has not yet told
	// this connection of would go unseen. NOOP makes it tell (§6.1.2), and
	// its EXISTS and EXPUNGE responses arrive before STATUS's answer.
	//
	// A server may also run the two at once (Dovecot does, STATUS not
	// waiting for NOOP's sync), so STATUS can answer from the view before
	// the changes NOOP reports: one expunge and one delivery would leave
	// the count as it was and UIDNEXT behind. If the server reported any
	// change while the three ran, STATUS is asked again, after them, and
	// a change reported during that one too means the mailbox is selected
	// again.
	//
	// A server that refuses STATUS on the selected mailbox (RFC 3501
	// §6.3.10 said a client should not ask it) has the mailbox selected
	// again.
	before := s.reported.Load()
	noop := s.client.Noop()
	data, serr := s.client.Status(s.mailbox, statusItems).Wait()
	err = errors.Join(noop.Wait(), waitIdle())
	if err == nil && serr == nil && s.reported.Load() != before {
		before = s.reported.Load()
		data, serr = s.client.Status(s.mailbox, statusItems).Wait()
		if serr == nil && s.reported.Load() != before {
			return Mailbox{}, false, nil
		}
	}
	var refused *imap.Error
	if err == nil && errors.As(serr, &refused) {
		return Mailbox{}, false, nil
	}
	if err = cmp.Or(err, serr); err != nil {
		return Mailbox{}, false, fmt.Errorf("upstream: status %q: %w", s.mailbox, err)
	}
	selected := s.client.Mailbox()
	if data.NumMessages == nil || data.UIDNext == 0 || data.UIDValidity != s.uidValidity ||
		selected == nil || selected.NumMessages != *data.NumMessages {
		return Mailbox{}, false, nil
	}
	s.uidNext = uint32(data.UIDNext)
	s.info.State = imapState(s.uidNext, *data.NumMessages)
	s.info.Messages = int(*data.NumMessages)
	return s.info, true, nil
}

// statusItems are what refreshSelected asks STATUS for.
var statusItems = &imap.StatusOptions{NumMessages: true, UIDNext: true, UIDValidity: true}

// imapState is a Mailbox's State: UIDNEXT and EXISTS; "" when the server
// gave no UIDNEXT, which leaves the state unknown.
func imapState(uidNext, exists uint32) string {
	if uidNext == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(uidNext), 10) + "/" + strconv.FormatUint(uint64(exists), 10)
}

// parseIMAPState is the UIDNEXT and EXISTS of an imapState.
func parseIMAPState(state string) (uidNext, exists uint32, ok bool) {
	next, count, ok := strings.Cut(state, "/")
	if !ok {
		return 0, 0, false
	}
	n, err1 := strconv.ParseUint(next, 10, 32)
	c, err2 := strconv.ParseUint(count, 10, 32)
	if err1 != nil || err2 != nil || n == 0 {
		return 0, 0, false
	}
	return uint32(n), uint32(c), true
}

// idOf is the ID of the message with the UID: the UID in decimal.
func idOf(uid uint32) ID { return ID(strconv.FormatUint(uint64(uid), 10)) }

// uidOf is the UID an ID names; ok is false for an ID this store never
// gives: anything but a UID in decimal without leading zeros.
func uidOf(id ID) (uid uint32, ok bool) {
	if len(id) == 0 || id[0] == '0' || id[0] == '+' {
		return 0, false
	}
	n, err := strconv.ParseUint(string(id), 10, 32)
	return uint32(n), err == nil
}

// DovecotUIDL is the unique-id (RFC 1939 §7) that the IMAP store suggests
// for a message: its UID and the mailbox's UIDVALIDITY, each as eight
// lower-case hex digits. That is what Dovecot's default pop3_uidl_format
// (%08Xu%08Xv) produces, so clients moving from Dovecot's own POP3 server
// to the gateway in front of the same mailbox do not download everything
// again.
func DovecotUIDL(uidValidity, uid uint32) string {
	const hex = "0123456789abcdef"
	var b [16]byte
	for i := 7; i >= 0; i-- {
		b[i] = hex[uid&0xf]
		b[8+i] = hex[uidValidity&0xf]
		uid >>= 4
		uidValidity >>= 4
	}
	return string(b[:])
}

// Snapshot lists every message of the selected mailbox by UID with its
// size, flags, arrival time and Message-ID, in UID order, with one FETCH;
// and with one more, the server's permanent ids where it has them.
func (s *Session) Snapshot(ctx context.Context) (_ []Entry, err error) {
	defer s.timed("list", time.Now(), &err)
	if s.info.Messages == 0 {
		return nil, nil
	}
	defer s.op(ctx)()
	var all imap.SeqSet
	all.AddRange(1, 0) // 1:*
	listed, err := s.fetchEntries(all, s.info.Messages)
	if err != nil {
		return nil, err
	}
	if err := s.identify("1:*", listed); err != nil {
		return nil, err
	}
	return s.entries(listed), nil
}

// uidEntry is an Entry with its UID.
type uidEntry struct {
	uid uint32
	Entry
}

// entries is the Entries of listed, with their IDs and suggested UIDLs.
func (s *Session) entries(listed []uidEntry) []Entry {
	entries := make([]Entry, len(listed))
	for i, e := range listed {
		entries[i] = e.Entry
		entries[i].ID = idOf(e.uid)
		entries[i].UIDL = DovecotUIDL(s.uidValidity, e.uid)
	}
	return entries
}

// fetchEntries lists the messages of set by UID with size, flags,
// arrival time and Message-ID, in UID order, with one FETCH.
func (s *Session) fetchEntries(set imap.NumSet, capacity int) ([]uidEntry, error) {
	cmd := s.client.Fetch(set, &imap.FetchOptions{
		UID: true, RFC822Size: true, Flags: true, InternalDate: true,
		BodySection: []*imap.FetchItemBodySection{messageIDField},
	})
	entries := make([]uidEntry, 0, capacity)
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		e := uidEntry{Entry: Entry{Size: -1}}
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				e.uid = uint32(item.UID)
			case imapclient.FetchItemDataRFC822Size:
				e.Size = item.Size
			case imapclient.FetchItemDataFlags:
				e.Deleted = slices.Contains(item.Flags, imap.FlagDeleted)
				e.Flags = make([]string, len(item.Flags))
				for i, f := range item.Flags {
					e.Flags[i] = string(f)
				}
			case imapclient.FetchItemDataInternalDate:
				e.InternalDate = item.Time
			case imapclient.FetchItemDataBodySection:
				if item.Literal == nil {
					continue
				}
				r := &literalReader{r: item.Literal, size: item.Literal.Size()}
				e.MessageID = readMessageID(r)
				if r.err != nil {
					// As in FetchEach: once a read of the literal has
					// failed, the IMAP client's reader owns the stream
					// again, and reading on (Next and Close discard
					// what is left of the literal) would race with it.
					// The rest of the response cannot be read.
					s.abort()
					s.client.Close()
					return nil, fmt.Errorf("upstream: listing messages: %w", r.err)
				}
			}
		}
		// A response without the size is a flag update the server sent
		// on its own, e.g. for a message expunged by another client.
		if e.uid == 0 || e.Size < 0 {
			continue
		}
		entries = append(entries, e)
	}
	if err := cmd.Close(); err != nil {
		return nil, fmt.Errorf("upstream: listing messages: %w", err)
	}
	slices.SortFunc(entries, func(a, b uidEntry) int { return cmp.Compare(a.uid, b.uid) })
	entries = slices.CompactFunc(entries, func(a, b uidEntry) bool { return a.uid == b.uid })
	return entries, nil
}

// messageIDField is BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]: a few dozen
// octets per message, and no \Seen.
var messageIDField = &imap.FetchItemBodySection{
	Specifier:    imap.PartSpecifierHeader,
	HeaderFields: []string{"Message-ID"},
	Peek:         true,
}

// maxMessageIDField bounds what is kept of a Message-ID field.
const maxMessageIDField = 4 << 10

// readMessageID reads the literal of a HEADER.FIELDS (MESSAGE-ID) fetch
// to its end and returns the field's unfolded value.
func readMessageID(r io.Reader) string {
	field, _ := io.ReadAll(io.LimitReader(r, maxMessageIDField))
	io.Copy(io.Discard, r)
	msg, err := mail.ReadMessage(bytes.NewReader(append(field, "\r\n\r\n"...)))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(msg.Header.Get("Message-Id"))
}

// Fetch streams the raw octets of the message with the given UID
// (BODY.PEEK[], so \Seen is not set). The caller reads to the end or closes
// early: Close then reads and discards the rest, unless ctx was cancelled,
// in which case the connection is closed instead and the session is over.
//
// A response without the body (a flag update the server sent on its own
// before it) does not end the wait: the body may follow in a second
// response. Only when none came does Fetch ask whether the message is
// still there, and returns ErrMessageGone if not, ErrNoBody if it is; a
// body sent as NIL is ErrNoBody at once.
func (s *Session) Fetch(ctx context.Context, uid uint32) (_ io.ReadCloser, err error) {
	defer s.timed("fetch", time.Now(), &err)
	return s.fetchSection(ctx, uid, &imap.FetchItemBodySection{Peek: true})
}

// FetchPart streams at most n octets of the raw message from offset on
// (BODY.PEEK[]<offset.n>, RFC 9051 §6.4.5): byte for byte the part of what
// Fetch streams, unlike BODY[HEADER] and BODY[TEXT], which some providers
// rebuild. Fewer than n octets means the message ends there.
func (s *Session) FetchPart(ctx context.Context, uid uint32, offset, n int64) (_ io.ReadCloser, err error) {
	defer s.timed("fetch", time.Now(), &err)
	return s.fetchSection(ctx, uid, &imap.FetchItemBodySection{Peek: true, Partial: &imap.SectionPartial{Offset: offset, Size: n}})
}

func (s *Session) fetchSection(ctx context.Context, uid uint32, section *imap.FetchItemBodySection) (_ io.ReadCloser, err error) {
	done := s.op(ctx)
	s.await(uid)
	defer s.awaiting.Store(0)
	cmd := s.client.Fetch(imap.UIDSetNum(imap.UID(uid)), &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{section},
	})
	sentNIL := false
	if msg := cmd.Next(); msg != nil {
		for item := msg.Next(); item != nil; item = msg.Next() {
			if body, ok := item.(imapclient.FetchItemDataBodySection); ok {
				if body.Literal != nil {
					return s.newMessageReader(ctx, msg, body, done, cmd.Close), nil
				}
				sentNIL = true
			}
		}
	}
	// The body, if it comes, is in a later response, which reaches
	// strayFetch before the command can end: the IMAP client reads
	// nothing past a literal until it has been read.
	closed := make(chan error, 1)
	go func() { closed <- cmd.Close() }()
	wait := func() error { return <-closed }
	select {
	case st := <-s.stray:
		if st.body.Literal != nil {
			return s.newMessageReader(ctx, st.msg, st.body, done, wait), nil
		}
		for st.msg.Next() != nil {
		}
		sentNIL = true
		err = wait()
	case err = <-closed:
	}
	if err != nil {
		done()
		return nil, fmt.Errorf("upstream: fetch UID %d: %w", uid, err)
	}
	if sentNIL {
		done()
		return nil, ErrNoBody
	}
	exists, err := s.exists(uid)
	done()
	switch {
	case err != nil:
		return nil, err
	case !exists:
		return nil, ErrMessageGone
	}
	return nil, ErrNoBody
}

// exists tells whether the selected mailbox still holds uid.
func (s *Session) exists(uid uint32) (bool, error) {
	data, err := s.client.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{imap.UIDSetNum(imap.UID(uid))}}, nil).Wait()
	if err != nil {
		return false, fmt.Errorf("upstream: looking for UID %d: %w", uid, err)
	}
	return slices.Contains(data.AllUIDs(), imap.UID(uid)), nil
}

func (s *Session) newMessageReader(ctx context.Context, msg *imapclient.FetchMessageData, body imapclient.FetchItemDataBodySection, done func(), wait func() error) *messageReader {
	return &messageReader{s: s, ctx: ctx, wait: wait, msg: msg, lit: &literalReader{r: body.Literal, size: body.Literal.Size()}, done: done}
}

type messageReader struct {
	s    *Session
	ctx  context.Context
	wait func() error // ends the command, once the response is read
	msg  *imapclient.FetchMessageData
	lit  *literalReader
	done func()
	eof  bool
	err  error
}

func (r *messageReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.lit.Read(p)
	if err == io.EOF {
		r.eof = true
	} else if err != nil {
		r.err = fmt.Errorf("upstream: reading message: %w", err)
		return n, r.err
	}
	return n, err
}

// Size is the length of the literal the server announced: the raw octets
// the reader returns when read to the end.
func (r *messageReader) Size() int64 { return r.lit.size }

func (r *messageReader) Close() error {
	defer r.done()
	if r.err != nil || r.ctx.Err() != nil {
		r.s.abort()
		if r.err == nil {
			// Once a read of the literal has failed, the IMAP client's
			// reader owns the stream again; read it only if none has.
			io.Copy(io.Discard, r.lit)
		}
		// The failed literal leaves the response unreadable: the IMAP
		// client's reader fails on the closed connection and ends every
		// pending command, which Close waits for.
		r.s.client.Close()
		return r.err
	}
	if !r.eof {
		if _, err := io.Copy(io.Discard, r.lit); err != nil {
			r.s.client.Close()
			return fmt.Errorf("upstream: reading message: %w", err)
		}
	}
	for r.msg.Next() != nil {
	}
	if err := r.wait(); err != nil {
		return fmt.Errorf("upstream: fetch: %w", err)
	}
	return nil
}

// abort breaks the connection at once. The IMAP client's reader may be
// waiting for a literal to be consumed; with the connection gone, what is
// left of it drains quickly and the client can shut down.
func (s *Session) abort() {
	s.conn.Conn.Close()
}

// Close logs out, waiting a moment for the server's reply, and closes the
// connection.
func (s *Session) Close() error {
	select {
	case <-s.client.Closed():
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := s.op(ctx)
	waitIdle := s.stopIdle()
	s.client.Logout().Wait()
	waitIdle()
	done()
	return s.client.Close()
}

// Alive tells whether the connection is still open.
func (s *Session) Alive() bool {
	select {
	case <-s.client.Closed():
		return false
	default:
		return true
	}
}

// Selected describes the mailbox chosen by the last Select.
func (s *Session) Selected() Mailbox { return s.info }

// FetchEach fetches several messages with one UID FETCH and calls each
// with every message's ID and raw octets, in the server's order. A
// message expunged by someone else is skipped. If each fails, or ctx is
// cancelled, the connection is closed and the session is over.
func (s *Session) FetchEach(ctx context.Context, ids []ID, each func(id ID, body io.Reader) error) (err error) {
	defer s.timed("fetch-batch", time.Now(), &err)
	set, err := uidSet(ids)
	if err != nil || len(set) == 0 {
		return err
	}
	defer s.op(ctx)()
	cmd := s.client.Fetch(set, &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	})
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		var uid imap.UID
		for item := msg.Next(); item != nil; item = msg.Next() {
			switch item := item.(type) {
			case imapclient.FetchItemDataUID:
				uid = item.UID
			case imapclient.FetchItemDataBodySection:
				if uid == 0 || item.Literal == nil {
					continue // an unsolicited update, or no body
				}
				r := &literalReader{r: item.Literal, size: item.Literal.Size()}
				if err := each(idOf(uint32(uid)), r); err != nil || r.err != nil {
					s.abort()
					if r.err == nil {
						drainFetch(cmd, msg, r)
					}
					s.client.Close()
					if err == nil {
						err = r.err
					}
					return fmt.Errorf("upstream: fetch: %w", err)
				}
			}
		}
	}
	if err := cmd.Close(); err != nil {
		return fmt.Errorf("upstream: fetch: %w", err)
	}
	return nil
}

// drainFetch reads what is left of a fetch after the connection was
// closed, so the IMAP client's reader, which waits for each literal to be
// consumed, can see the connection fail and stop. What is already buffered
// still reads fine; the first failed read ends it, and a literal whose read
// failed is never read again, since the client's reader then owns the
// stream.
func drainFetch(cmd *imapclient.FetchCommand, msg *imapclient.FetchMessageData, cur *literalReader) {
	for {
		if _, err := io.Copy(io.Discard, cur); err != nil {
			return
		}
		for {
			item := msg.Next()
			if item == nil {
				break
			}
			if body, ok := item.(imapclient.FetchItemDataBodySection); ok && body.Literal != nil {
				cur = &literalReader{r: body.Literal, size: body.Literal.Size()}
				if _, err := io.Copy(io.Discard, cur); err != nil {
					return
				}
			}
		}
		if msg = cmd.Next(); msg == nil {
			return
		}
		cur = &literalReader{r: strings.NewReader("")}
	}
}

// literalReader reads one message literal and reports a connection that
// ended inside it.
type literalReader struct {
	r    io.Reader
	size int64
	n    int64
	err  error
}

func (l *literalReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	if err == io.EOF && l.n < l.size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		l.err = err
	}
	return n, err
}

// uidSet is the UIDs the IDs name; an ID this store never gives is an
// error.
func uidSet(ids []ID) (imap.UIDSet, error) {
	var set imap.UIDSet
	for _, id := range ids {
		uid, ok := uidOf(id)
		if !ok {
			return nil, fmt.Errorf("upstream: %q is no IMAP UID", id)
		}
		set.AddNum(imap.UID(uid))
	}
	return set, nil
}

// Open streams the raw octets of the message with the given ID: whole, as
// Fetch does, when n < 0; otherwise at most n octets from offset on, as
// FetchPart does.
func (s *Session) Open(ctx context.Context, id ID, offset, n int64) (io.ReadCloser, error) {
	uid, ok := uidOf(id)
	if !ok {
		return nil, fmt.Errorf("upstream: %q is no IMAP UID", id)
	}
	if n < 0 {
		if offset != 0 {
			return nil, fmt.Errorf("upstream: a body from offset %d needs a length", offset)
		}
		return s.Fetch(ctx, uid)
	}
	return s.FetchPart(ctx, uid, offset, n)
}

// Changes lists what changed since the mailbox was in state since, as the
// last Select found it now. New messages come from one UID FETCH of
// UIDNEXT:*, with the items Snapshot fetches: UIDs are never reused, so no
// other message can be new (RFC 9051 §2.3.1.1). Expunges, when the count
// says there were any, from one UID SEARCH of the UIDs below the old
// UIDNEXT, which costs UIDs only (with ESEARCH, RFC 4731, a few ranges):
// what it finds is what Kept says is there. The IMAP client cannot ask
// for QRESYNC's VANISHED (RFC 7162 §3.2.10), which would say the same.
//
// An answer that does not add up (a new UID outside the old and the new
// UIDNEXT, a UID listed twice, a range past the old UIDNEXT, counts that
// differ from EXISTS) is an error: the caller then lists every message.
func (s *Session) Changes(ctx context.Context, since Mailbox) (_ Changes, err error) {
	defer s.timed("list-changes", time.Now(), &err)
	prevNext, prevCount, ok := parseIMAPState(since.State)
	if !ok || since.Epoch != s.info.Epoch || s.uidNext == 0 || s.uidNext < prevNext {
		return Changes{}, errors.New("upstream: no changes to list across UIDVALIDITY or from an unknown UIDNEXT")
	}
	defer s.op(ctx)()
	var added []uidEntry
	if s.uidNext > prevNext && s.info.Messages > 0 {
		if added, err = s.listFrom(prevNext); err != nil {
			return Changes{}, err
		}
	}
	for i, e := range added {
		if e.uid >= s.uidNext {
			return Changes{}, fmt.Errorf("upstream: new UID %d at or above UIDNEXT %d", e.uid, s.uidNext)
		}
		if i > 0 && e.uid <= added[i-1].uid {
			return Changes{}, errors.New("upstream: new UIDs not strictly increasing")
		}
	}
	ch := Changes{Added: s.entries(added)}
	if s.info.Messages == int(prevCount)+len(added) || prevNext == 1 {
		return ch, nil
	}
	var below imap.UIDSet
	below.AddRange(1, imap.UID(prevNext-1))
	var opts *imap.SearchOptions
	if s.client.Caps().Has(imap.CapESearch) {
		opts = &imap.SearchOptions{ReturnAll: true}
	}
	data, err := s.client.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{below}}, opts).Wait()
	if err != nil {
		return Changes{}, fmt.Errorf("upstream: listing UIDs: %w", err)
	}
	var present imap.UIDSet
	if set, ok := data.All.(imap.UIDSet); ok {
		present = slices.Clone(set)
	}
	kept := 0
	for _, r := range present {
		if r.Start == 0 || r.Stop == 0 || r.Stop < r.Start || uint32(r.Stop) >= prevNext {
			return Changes{}, fmt.Errorf("upstream: listing UIDs: unexpected range %v below UIDNEXT %d", r, prevNext)
		}
		kept += int(r.Stop - r.Start + 1)
	}
	slices.SortFunc(present, func(a, b imap.UIDRange) int { return cmp.Compare(a.Start, b.Start) })
	for i := 1; i < len(present); i++ {
		if present[i].Start <= present[i-1].Stop {
			return Changes{}, fmt.Errorf("upstream: listing UIDs: ranges %v and %v overlap", present[i-1], present[i])
		}
	}
	if kept+len(added) != s.info.Messages {
		return Changes{}, fmt.Errorf("upstream: %d UIDs kept and %d new, but the mailbox has %d messages", kept, len(added), s.info.Messages)
	}
	ch.Kept = func(id ID) bool {
		uid, ok := uidOf(id)
		if !ok {
			return false
		}
		i, found := slices.BinarySearchFunc(present, imap.UID(uid), func(r imap.UIDRange, uid imap.UID) int {
			if r.Stop < uid {
				return -1
			}
			if r.Start > uid {
				return 1
			}
			return 0
		})
		return found && i < len(present)
	}
	return ch, nil
}

// listFrom lists the messages from UID first on, as Snapshot does. The
// server answers first:* with the last message even when its UID is
// below first (RFC 9051 §6.4.9): that one is left out.
func (s *Session) listFrom(first uint32) ([]uidEntry, error) {
	var set imap.UIDSet
	set.AddRange(imap.UID(first), 0) // first:*
	entries, err := s.fetchEntries(set, 0)
	if err != nil {
		return nil, err
	}
	entries = slices.DeleteFunc(entries, func(e uidEntry) bool { return e.uid < first })
	if err := s.identify(fmt.Sprintf("%d:*", first), entries); err != nil {
		return nil, err
	}
	return entries, nil
}
