package proxy

import (
	"context"

	"github.com/pop3gw/gateway/upstream/jmap"
)

// The JMAP store's session meets the seam, with its changes.
var (
	_ Session      = (*jmap.Session)(nil)
	_ changeLister = (*jmap.Session)(nil)
	_ trashFinder  = (*jmap.Session)(nil)
)

// JMAPStore is a JMAP server (RFC 8620/8621) as an upstream's Store: an
// OAuth2 login (upstream.Bearer) sends its token as a bearer token and
// asks the token source again when one is refused; any other login is
// HTTP Basic.
func JMAPStore(s *jmap.Store) Store { return jmapStore{s} }

type jmapStore struct{ s *jmap.Store }

func (s jmapStore) Login(ctx context.Context, login StoreLogin) (Session, error) {
	creds := jmap.Credentials{Username: login.Username, Password: login.Password}
	if login.OAuth2 != "" {
		creds.Token, creds.Tokens = login.Token, login.Tokens
	}
	sess, err := s.s.Login(ctx, creds, login.Mailbox)
	if err != nil {
		return nil, err
	}
	return sess, nil
}
