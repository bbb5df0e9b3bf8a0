// Package state is the home of what the gateway remembers beyond one
// connection; the code lives in its subpackages, one per place the state is
// kept:
//
//   - guard: the failed-login delays (a pop3.LoginGuard) in the process, and
//     the delay rule every guard shares;
//   - boltstate: the UIDL store, hidden messages and delete journal (a
//     proxy.StateStore) in a bbolt file under data_dir;
//   - redisstate: what replicas share through Redis: maildrop locks (a
//     proxy.Locker), the login guard and the UIDL store.
//
// Without data_dir or Redis, the UIDL store and the maildrop locks are the
// in-memory ones of package proxy.
package state
