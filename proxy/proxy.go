// Package proxy holds the POP3 rules every mail store shares, once, above
// the store seam (Store and Session): it decides which upstream account a
// login maps to, logs in there, fixes the message list for the session,
// measures a size the store does not know (measure.go) and corrects one it
// got wrong, serves messages through the cache,
// fetches ahead, resumes a transfer cut off, and applies deletions at QUIT
// in the upstream's mode. What must outlive a session (each message's UIDL,
// the messages deleted but kept upstream, deletes not finished yet) it keeps
// in a StateStore. It is the pop3.Backend; an IMAP server (package
// upstream) is one store behind it, and an upstream may name another.
package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pop3gw/gateway/cache"
	"github.com/pop3gw/gateway/internal/passwd"
	"github.com/pop3gw/gateway/internal/username"
	"github.com/pop3gw/gateway/pop3"
	"github.com/pop3gw/gateway/upstream"
)

// Upstream is one IMAP account provider and how to use it.
type Upstream struct {
	Name     string
	Server   upstream.Server
	Mailbox  string // the mailbox POP3 sees
	OnDelete upstream.DeleteMode
	// Trash is used by DeleteTrash when the server marks no mailbox \Trash.
	Trash string
	// NoFetchAhead turns off fetching the following messages while the
	// client reads one, for providers that meter download volume.
	NoFetchAhead bool
	// KeepConnection is how long a logged-in connection is kept after its
	// session for the next login; 0 means DefaultPoolIdle, negative none.
	KeepConnection time.Duration
	// OAuth2 is the SASL mechanism for mapped users' OAuth2 access tokens,
	// upstream.XOAuth2 or upstream.OAuthBearer, or upstream.Bearer for a
	// store that sends them in HTTP; empty for passwords.
	OAuth2 string
	// Store is where the mail is, when it is not the IMAP server at
	// Server: another kind of store, or one in memory for tests.
	Store Store
	// PassthroughFailures is how many refused passthrough logins a minute
	// are forwarded to this upstream; over it, passthrough logins get
	// [SYS/TEMP] until the budget refills. 0 means
	// DefaultPassthroughFailures, negative no limit.
	PassthroughFailures int
}

// User is a mapped user: local credentials for one upstream account.
type User struct {
	Name         string
	PasswordHash string // argon2id or bcrypt, checked locally
	Upstream     string
	UpstreamUser string
	// UpstreamPassword returns the upstream secret. It is called at each
	// login, so a rotated secret file takes effect without a restart.
	UpstreamPassword func() (string, error)
	// UpstreamToken returns an OAuth2 access token, for an upstream with
	// OAuth2 set; refresh asks for a new one because the upstream refused
	// the last. An error wrapping ErrNeedsAuthorization refuses the login
	// with [AUTH]; any other is a temporary failure.
	UpstreamToken func(ctx context.Context, refresh bool) (string, error)
}

// ErrNeedsAuthorization means an account's OAuth2 grant is missing, revoked
// or expired: the operator must authorise the gateway again.
var ErrNeedsAuthorization = errors.New("proxy: the upstream account needs a new OAuth2 authorisation")

// Passthrough forwards logins that are not mapped users, unchanged, to an
// upstream: the one named for the login's domain, else the default.
type Passthrough struct {
	Upstream string
	Domains  map[string]string // lower-case domain -> upstream name
}

// Config is what the gateway serves. It is replaced whole on reload.
type Config struct {
	Upstreams map[string]*Upstream
	// Users are matched case-insensitively: New and Reload key them by
	// username.Canonical, the key the POP3 door gives each login.
	Users       map[string]*User
	Passthrough *Passthrough // nil: only mapped users may log in
}

// canonical returns cfg with Users keyed by canonical name; config
// validation refuses two users that fold to one.
func (cfg *Config) canonical() *Config {
	for name := range cfg.Users {
		if username.Canonical(name) != name {
			c := *cfg
			c.Users = make(map[string]*User, len(cfg.Users))
			for name, u := range cfg.Users {
				c.Users[username.Canonical(name)] = u
			}
			return &c
		}
	}
	return cfg
}

// Gateway is the pop3.Backend that serves every login.
type Gateway struct {
	config atomic.Pointer[Config]
	cache  *cache.Cache
	log    *slog.Logger
	pool   *pool
	snaps  *snapshots
	// budget bounds the bodies held outside the cache and the remembered
	// listings; nil: no bound.
	budget *cache.Budget
	// prefetch fetches the next message while the client reads one.
	prefetch bool

	locker Locker
	state  StateStore
	// holders knows the credentials of the sessions holding maildrops,
	// to answer [IN-USE] to the same ones without an upstream login.
	holders *holders

	budgetsMu sync.Mutex
	budgets   map[string]*failureBudget // by upstream name
	refusals  RefusalCounter            // shares the budgets; nil: none

	// life ends when the gateway closes: it cancels every fetch under
	// way. goroutines counts every goroutine the gateway starts; Close
	// waits for them.
	life       context.Context
	shutdown   context.CancelFunc
	goroutines goroutines
}

// New returns a gateway serving cfg. The cache may be shared by several.
func New(cfg *Config, c *cache.Cache, log *slog.Logger) *Gateway {
	if log == nil {
		log = slog.Default()
	}
	g := &Gateway{
		cache:    c,
		log:      log,
		locker:   NewMemoryLocker(),
		state:    NewMemoryState(),
		snaps:    newSnapshots(nil),
		prefetch: true,
	}
	g.life, g.shutdown = context.WithCancel(context.Background())
	g.pool = g.newPool(DefaultPoolIdle, DefaultPoolSize)
	g.holders = newHolders(g.pool.digest)
	g.config.Store(cfg.canonical())
	return g
}

// SetLocker replaces the in-process maildrop locks, for instance by locks
// shared among replicas. Call it before serving.
func (g *Gateway) SetLocker(l Locker) { g.locker = l }

// SetBudget bounds the memory that grows with sessions and messages
// beyond the cache: a body read whole before RETR answers or fetched ahead
// holds its size of b until the cache holds it or the client has it, and
// remembered listings hold theirs, up to a quarter of b. Without room, a
// message streams from the upstream and fetching ahead does not start.
// Call it before serving.
func (g *Gateway) SetBudget(b *cache.Budget) {
	g.budget = b
	g.snaps = newSnapshots(b)
}

// SetPrefetch turns fetching ahead on or off for every upstream. Call it
// before serving.
func (g *Gateway) SetPrefetch(on bool) { g.prefetch = on }

// SetPool sets how long an upstream connection is kept after its POP3
// session ends, unless its upstream says otherwise, and how many are kept
// at most; 0 keeps none. Call it before serving.
func (g *Gateway) SetPool(idle time.Duration, size int) {
	old := g.pool
	g.pool = g.newPool(idle, size)
	old.closeAll()
}

// newPool is a pool whose kept connections bring their maildrop's
// listing up to date when they hear of a change.
func (g *Gateway) newPool(idle time.Duration, size int) *pool {
	p := newPool(idle, size, &g.goroutines)
	p.refresh, p.life = g.prelist, g.life
	return p
}

// Reload swaps in a new configuration. Sessions already open keep the
// upstream they logged in to; idle connections are dropped, since their
// upstream may have changed.
func (g *Gateway) Reload(cfg *Config) {
	g.config.Store(cfg.canonical())
	g.pool.closeAll()
}

// Close stops every fetch under way, logs out of the idle upstream
// connections and waits until every goroutine the gateway started has
// ended. Call it once the POP3 server has shut down.
func (g *Gateway) Close() {
	g.goroutines.close()
	g.shutdown()
	g.pool.closeAll()
	g.goroutines.wait()
}

// account is a resolved login: where to log in and with what.
type account struct {
	upstream *Upstream
	username string
	password string
	token    func(ctx context.Context, refresh bool) (string, error) // OAuth2, instead of password
	// forwarded is a passthrough login: its credentials are checked only
	// by the upstream.
	forwarded bool
	user      string // the mapped user's configured name, for logs
}

// userAccount is the upstream account of a mapped user.
func userAccount(u *User, up *Upstream) (*account, error) {
	if up == nil {
		return nil, fmt.Errorf("unknown upstream %q", u.Upstream)
	}
	acct := &account{upstream: up, username: u.UpstreamUser, user: u.Name}
	if up.OAuth2 != "" {
		if u.UpstreamToken == nil {
			return nil, fmt.Errorf("upstream %s logs in with OAuth2, but the user has no token", up.Name)
		}
		acct.token = u.UpstreamToken
		return acct, nil
	}
	secret, err := u.UpstreamPassword()
	if err != nil {
		return nil, err
	}
	acct.password = secret
	return acct, nil
}

// key names the account in the cache, the locks and the pool. A
// passthrough name is forwarded as typed but keyed folded, so case
// variants of one upstream account are one maildrop.
func (a *account) key() string { return a.upstream.Name + "/" + username.Canonical(a.username) }

// maildrop names the mailbox POP3 sees, for the locks, the pool and the
// remembered listings.
func (a *account) maildrop() string { return a.key() + "\x00" + a.upstream.Mailbox }

var errTemporary = &pop3.Error{Code: pop3.CodeSysTemp, Text: "Temporary failure, please try again later."}

// resolve maps a POP3 login to an upstream account, checking a mapped
// user's local password. Every refusal is pop3.ErrAuthFailed, whatever the
// reason, so a client cannot tell an unknown user from a wrong password.
// A case variant of a mapped name is that user: it is checked against the
// local hash and never forwarded.
func (g *Gateway) resolve(login *pop3.LoginInfo) (*account, error) {
	return g.resolveName(login.Username, login.Password)
}

// resolveName is resolve for any door: the name and password as the
// client gave them.
func (g *Gateway) resolveName(name, password string) (*account, error) {
	cfg := g.config.Load()
	// The gateway folds names itself, whatever key the door used for its
	// own limits: which account a name means is a rule of the gateway.
	if u, ok := cfg.Users[username.Canonical(name)]; ok {
		ok, err := passwd.Verify(u.PasswordHash, password)
		if err != nil {
			g.log.Error("checking password hash", "user", u.Name, "err", err)
		}
		if !ok {
			return nil, pop3.ErrAuthFailed
		}
		acct, err := userAccount(u, cfg.Upstreams[u.Upstream])
		if err != nil {
			g.log.Error("no upstream secret for user", "user", u.Name, "err", err)
			return nil, errTemporary
		}
		return acct, nil
	}
	pt := cfg.Passthrough
	if pt == nil {
		passwd.DummyVerify(password)
		return nil, pop3.ErrAuthFailed
	}
	upName := pt.Upstream
	if _, domain, ok := strings.Cut(name, "@"); ok {
		if d, ok := pt.Domains[strings.ToLower(domain)]; ok {
			upName = d
		}
	}
	up := cfg.Upstreams[upName]
	if up == nil {
		passwd.DummyVerify(password)
		return nil, pop3.ErrAuthFailed
	}
	return &account{upstream: up, username: name, password: password, forwarded: true}, nil
}

// Login implements pop3.Backend.
func (g *Gateway) Login(ctx context.Context, login *pop3.LoginInfo) (pop3.Maildrop, error) {
	acct, err := g.resolve(login)
	if err != nil {
		return nil, err
	}
	if addr, ok := addrPort(login.Remote); ok {
		ctx = upstream.WithClient(ctx, addr)
	}
	log := g.log.With("upstream", acct.upstream.Name)
	if acct.forwarded {
		// Until the upstream accepts it, a forwarded name may be a password
		// typed into the wrong field: Debug only.
		log.Debug("forwarding login", "user", login.Username)
	} else {
		log = log.With("user", acct.user)
	}
	lockKey := acct.maildrop()
	var sess Session
	var release func()
	if acct.forwarded {
		// A forwarded login has no local hash: the upstream login is the
		// password check, and [IN-USE] (RFC 3206) is for credentials that
		// passed it. Locking first would answer a guess at once, uncounted,
		// and tell that the account is in use. Credentials that a session
		// holding the maildrop logged in with have passed it already.
		if acct.token == nil && g.holders.heldWith(lockKey, acct) {
			log.Debug("maildrop held with these credentials: in use")
			return nil, pop3.ErrInUse
		}
		if sess = g.reuse(ctx, acct); sess == nil {
			budget := g.passthroughBudget(acct.upstream)
			if !budget.allow(ctx) {
				log.Debug("passthrough failure budget spent: login not forwarded")
				return nil, errTemporary
			}
			sess, err = g.open(ctx, acct)
			if errors.Is(err, upstream.ErrAuthFailed) && budget.spend(ctx) {
				log.Warn("too many refused passthrough logins: not forwarding any for now", "per_minute", budget.perMinute)
			}
		}
		if err == nil {
			if release, err = g.lock(ctx, lockKey, log); err != nil {
				g.pool.put(lockKey, acct, sess)
				return nil, err
			}
			if acct.token == nil {
				forget, unlock := g.holders.hold(lockKey, acct), release
				release = func() { forget(); unlock() }
			}
		}
	} else {
		// The local password was checked: a busy maildrop is told at once,
		// without an upstream connection.
		if release, err = g.lock(ctx, lockKey, log); err != nil {
			return nil, err
		}
		if sess = g.reuse(ctx, acct); sess == nil {
			// The lock is not held while logging in upstream, so a slow
			// upstream login cannot keep the owner out.
			release()
			sess, err = g.open(ctx, acct)
			if err == nil {
				if release, err = g.lock(ctx, lockKey, log); err != nil {
					g.pool.put(lockKey, acct, sess)
					return nil, err
				}
			}
		}
	}
	if err != nil {
		if errors.Is(err, ErrNeedsAuthorization) {
			log.Error("upstream login impossible until the account is authorised again", "err", err)
			return nil, pop3.ErrAuthFailed
		}
		if errors.Is(err, upstream.ErrAuthFailed) {
			log.Info("upstream refused the credentials", "err", err)
			return nil, pop3.ErrAuthFailed
		}
		log.Warn("upstream unavailable", "err", err)
		return nil, errTemporary
	}
	if acct.forwarded {
		log = log.With("user", login.Username)
	}
	md, err := g.newMaildrop(ctx, sess, acct, log)
	if err != nil {
		sess.Close()
		release()
		log.Warn("listing messages failed", "err", err)
		return nil, errTemporary
	}
	md.unlock = release
	return md, nil
}

// addrPort is the client's address, for upstreams that are told it.
func addrPort(a net.Addr) (netip.AddrPort, bool) {
	if tcp, ok := a.(*net.TCPAddr); ok {
		ap := tcp.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.IsValid()
	}
	if a == nil {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}

// lock takes the maildrop's [IN-USE] lock (RFC 1939 §4: the maildrop is
// held exclusively for the session). A lock service that cannot answer
// refuses the login for now rather than risk two sessions.
func (g *Gateway) lock(ctx context.Context, key string, log *slog.Logger) (release func(), err error) {
	release, ok, err := g.locker.Lock(ctx, key)
	switch {
	case err != nil:
		log.Error("maildrop lock unavailable", "err", err)
		return nil, errTemporary
	case !ok:
		return nil, pop3.ErrInUse
	}
	return release, nil
}

// reuse takes the maildrop's idle connection from the pool, if it was
// opened with the same credentials, and refreshes the mailbox, which
// both checks the connection and reports the mailbox's current state.
func (g *Gateway) reuse(ctx context.Context, acct *account) Session {
	sess := g.pool.take(acct.maildrop(), acct)
	if sess == nil {
		return nil
	}
	if _, err := sess.Refresh(ctx); err != nil {
		sess.Close()
		return nil
	}
	return sess
}

// open logs in to the account's store and opens the mailbox.
func (g *Gateway) open(ctx context.Context, acct *account) (Session, error) {
	sess, err := g.login(ctx, acct, false)
	if acct.token != nil && acct.upstream.OAuth2 != upstream.Bearer && errors.Is(err, upstream.ErrAuthFailed) {
		// The provider may have revoked the access token before its
		// expiry; one more try with a fresh token tells. A store that
		// takes the token source (Bearer) has tried that already.
		sess, err = g.login(ctx, acct, true)
	}
	return sess, err
}

// login logs in to the account's store, with a fresh OAuth2 token when
// refresh is set.
func (g *Gateway) login(ctx context.Context, acct *account, refresh bool) (Session, error) {
	up := acct.upstream
	login := StoreLogin{Username: acct.username, Password: acct.password, Mailbox: up.Mailbox}
	if acct.token != nil {
		token, err := acct.token(ctx, refresh)
		if err != nil {
			return nil, err
		}
		login.OAuth2, login.Token, login.Tokens, login.Password = up.OAuth2, token, acct.token, ""
	}
	return up.store().Login(ctx, login)
}

// checkDeletes describes what QUIT does to deleted messages. Only the
// server knows which mailbox is marked \Trash, so on_delete trash into the
// served mailbox, which the config file cannot always show, is caught here.
func checkDeletes(ctx context.Context, sess Session, up *Upstream) (string, error) {
	switch up.OnDelete {
	case upstream.DeleteExpunge:
		return "expunged", nil
	case upstream.DeleteSeen:
		return "marked \\Seen and kept", nil
	case upstream.DeleteKeep:
		return "kept", nil
	case upstream.DeleteTrash:
	default:
		return "", fmt.Errorf("unknown on_delete %q", up.OnDelete)
	}
	finder, ok := sess.(trashFinder)
	if !ok {
		return fmt.Sprintf("moved to the store's trash (%q if it marks none)", up.Trash), nil
	}
	t, err := finder.FindTrash(ctx, up.Trash)
	switch {
	case err != nil:
		return "", fmt.Errorf("on_delete trash: %w; set upstreams.%s.trash_mailbox", err, up.Name)
	case t.Served:
		return "", fmt.Errorf("upstreams.%s.mailbox %q is the trash (%q, marked \\Trash or named in trash_mailbox): upstreams.%s.on_delete trash would move deleted messages back into it under new UIDs, to be downloaded at every poll; set on_delete to expunge or serve another mailbox",
			up.Name, up.Mailbox, t.Mailbox, up.Name)
	case t.Marked:
		return fmt.Sprintf("moved to %q (marked \\Trash)", t.Mailbox), nil
	case t.Exists:
		return fmt.Sprintf("moved to %q (trash_mailbox)", t.Mailbox), nil
	}
	return fmt.Sprintf("moved to %q (trash_mailbox; created at the first delete)", t.Mailbox), nil
}

// CheckResult is the outcome of checking one mapped user's upstream login.
type CheckResult struct {
	User     string
	Upstream string
	Messages uint32
	// Deletes says what QUIT does to deleted messages, and for on_delete
	// trash where they go.
	Deletes string
	Err     error
}

// Check logs in to the upstream account of the named mapped users, or of
// every mapped user when no name is given, and selects its mailbox,
// reporting each result.
func (g *Gateway) Check(ctx context.Context, names ...string) []CheckResult {
	cfg := g.config.Load()
	if len(names) == 0 {
		names = slices.Sorted(maps.Keys(cfg.Users))
	}
	var results []CheckResult
	for _, name := range names {
		u := cfg.Users[username.Canonical(name)]
		if u == nil {
			results = append(results, CheckResult{User: name, Err: errors.New("no such user")})
			continue
		}
		r := CheckResult{User: cmp.Or(u.Name, name), Upstream: u.Upstream}
		acct, err := userAccount(u, cfg.Upstreams[u.Upstream])
		if err != nil {
			r.Err = err
		} else {
			sess, err := g.open(ctx, acct)
			if err != nil {
				r.Err = err
			} else {
				if entries, err := sess.Snapshot(ctx); err != nil {
					r.Err = err
				} else {
					r.Messages = uint32(len(entries))
					r.Deletes, r.Err = checkDeletes(ctx, sess, acct.upstream)
				}
				sess.Close()
			}
		}
		results = append(results, r)
	}
	return results
}
