// Package boltstate keeps the gateway's persistent state (a
// proxy.StateStore) in a bbolt file under the configured data_dir: the
// UIDL given to each message, the messages hidden after a delete that
// kept them upstream, the journal of deletes under way, and the sizes
// measured of messages their store lists without one (Graph).
//
// Every write is one bbolt transaction, which is on disk (fsync) when it
// returns, so a UIDL the proxy shows a client survives a crash or a kill
// of the process at any point. The file is locked while open: a second
// gateway on the same data_dir waits a moment, then fails to start.
//
// Maildrop names appear in the file only as SHA-256 hashes.
package boltstate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/pop3gw/gateway/proxy"
)

// FileName is the database's name in the data directory.
const FileName = "state.db"

// lockTimeout bounds the wait for another process's lock on the file.
const lockTimeout = 2 * time.Second

var (
	maildropsBucket = []byte("maildrops")
	uidlBucket      = []byte("uidl")   // identity -> UIDL
	holderBucket    = []byte("holder") // UIDL -> identity
	hiddenBucket    = []byte("hidden") // identity -> 1
	sizeBucket      = []byte("size")   // identity -> measured size, 8 octets big-endian
	journalKey      = []byte("journal")
)

// Store is a proxy.StateStore in a bbolt file. It is safe for concurrent
// use.
type Store struct {
	db *bolt.DB
}

var (
	_ proxy.StateStore = (*Store)(nil)
	_ proxy.SizeStore  = (*Store)(nil)
)

// Open opens, or creates, the state file in dir, creating dir (mode 0700)
// if needed.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("boltstate: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstate: %s is in use by another process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstate: opening %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(maildropsBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstate: %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Path is the state file's path.
func (s *Store) Path() string { return s.db.Path() }

func maildropKey(maildrop string) []byte {
	sum := sha256.Sum256([]byte(maildrop))
	return sum[:]
}

// bucket returns the maildrop's bucket, nil if it does not exist and
// create is false.
func bucket(tx *bolt.Tx, maildrop string, create bool) (*bolt.Bucket, error) {
	root := tx.Bucket(maildropsBucket)
	if !create {
		return root.Bucket(maildropKey(maildrop)), nil
	}
	b, err := root.CreateBucketIfNotExists(maildropKey(maildrop))
	if err != nil {
		return nil, err
	}
	for _, name := range [][]byte{uidlBucket, holderBucket, hiddenBucket, sizeBucket} {
		if _, err := b.CreateBucketIfNotExists(name); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Assign implements proxy.StateStore. A listing with no new message is
// read without writing anything.
func (s *Store) Assign(_ context.Context, maildrop string, ids, proposed []string) ([]string, []bool, error) {
	uidls := make([]string, len(ids))
	hidden := make([]bool, len(ids))
	complete := false
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := bucket(tx, maildrop, false)
		if b == nil {
			return nil
		}
		complete = lookup(b, ids, uidls, hidden)
		return nil
	})
	if err == nil && !complete {
		err = s.db.Update(func(tx *bolt.Tx) error {
			b, err := bucket(tx, maildrop, true)
			if err != nil {
				return err
			}
			if lookup(b, ids, uidls, hidden) {
				return nil // another session recorded them meanwhile
			}
			return record(b, ids, proposed, uidls)
		})
	}
	if err != nil {
		return nil, nil, fmt.Errorf("boltstate: %w", err)
	}
	return uidls, hidden, nil
}

// lookup fills in the recorded UIDLs and hidden flags, and tells whether
// every identity has a UIDL.
func lookup(b *bolt.Bucket, ids, uidls []string, hidden []bool) bool {
	byID, hid := b.Bucket(uidlBucket), b.Bucket(hiddenBucket)
	complete := true
	for i, id := range ids {
		u := byID.Get([]byte(id))
		if u == nil {
			complete = false
		}
		uidls[i] = string(u)
		hidden[i] = hid.Get([]byte(id)) != nil
	}
	return complete
}

// record gives each identity without a UIDL its proposed one, or the
// first variant of it that no other identity holds.
func record(b *bolt.Bucket, ids, proposed, uidls []string) error {
	byID, holders := b.Bucket(uidlBucket), b.Bucket(holderBucket)
	for i, id := range ids {
		if uidls[i] != "" {
			continue
		}
		u := proposed[i]
		for n := 1; holders.Get([]byte(u)) != nil; n++ {
			u = proxy.UIDLVariant(proposed[i], n)
		}
		if err := byID.Put([]byte(id), []byte(u)); err != nil {
			return err
		}
		if err := holders.Put([]byte(u), []byte(id)); err != nil {
			return err
		}
		uidls[i] = u
	}
	return nil
}

// Adopt implements proxy.StateStore. Nothing is written when no identity
// has anything to adopt, the common case once a maildrop's messages are
// known by their store ids.
func (s *Store) Adopt(_ context.Context, maildrop string, ids, previous []string) error {
	some := false
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := bucket(tx, maildrop, false)
		if b == nil {
			return nil
		}
		var err error
		some, err = adopt(b, ids, previous, false)
		return err
	})
	if err == nil && some {
		err = s.db.Update(func(tx *bolt.Tx) error {
			b, err := bucket(tx, maildrop, true)
			if err != nil {
				return err
			}
			_, err = adopt(b, ids, previous, true)
			return err
		})
	}
	if err != nil {
		return fmt.Errorf("boltstate: %w", err)
	}
	return nil
}

// adopt gives each identity without a UIDL the UIDL its previous identity
// holds, with its hidden mark, and tells whether there was any; it
// writes only when write is set.
func adopt(b *bolt.Bucket, ids, previous []string, write bool) (bool, error) {
	byID, holders, hid := b.Bucket(uidlBucket), b.Bucket(holderBucket), b.Bucket(hiddenBucket)
	some := false
	for i, id := range ids {
		if previous[i] == "" || byID.Get([]byte(id)) != nil {
			continue
		}
		u := byID.Get([]byte(previous[i]))
		if u == nil || string(holders.Get(u)) != previous[i] {
			continue
		}
		some = true
		if !write {
			return true, nil
		}
		u = bytes.Clone(u)
		if err := byID.Put([]byte(id), u); err != nil {
			return false, err
		}
		if err := holders.Put(u, []byte(id)); err != nil {
			return false, err
		}
		if hid.Get([]byte(previous[i])) != nil {
			if err := hid.Put([]byte(id), []byte{1}); err != nil {
				return false, err
			}
		}
	}
	return some, nil
}

// Hide implements proxy.StateStore.
func (s *Store) Hide(_ context.Context, maildrop string, ids []string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucket(tx, maildrop, true)
		if err != nil {
			return err
		}
		hid := b.Bucket(hiddenBucket)
		for _, id := range ids {
			if err := hid.Put([]byte(id), []byte{1}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boltstate: %w", err)
	}
	return nil
}

// Sizes implements proxy.SizeStore.
func (s *Store) Sizes(_ context.Context, maildrop string, ids []string) ([]int64, error) {
	sizes := make([]int64, len(ids))
	for i := range sizes {
		sizes[i] = -1
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		b, _ := bucket(tx, maildrop, false)
		if b == nil || b.Bucket(sizeBucket) == nil {
			return nil // a file from before sizes were kept
		}
		sb := b.Bucket(sizeBucket)
		for i, id := range ids {
			if v := sb.Get([]byte(id)); len(v) == 8 {
				sizes[i] = int64(binary.BigEndian.Uint64(v))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstate: %w", err)
	}
	return sizes, nil
}

// SetSizes implements proxy.SizeStore.
func (s *Store) SetSizes(_ context.Context, maildrop string, ids []string, sizes []int64) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucket(tx, maildrop, true)
		if err != nil {
			return err
		}
		sb := b.Bucket(sizeBucket)
		for i, id := range ids {
			if err := sb.Put([]byte(id), binary.BigEndian.AppendUint64(nil, uint64(sizes[i]))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("boltstate: %w", err)
	}
	return nil
}

// Journal implements proxy.StateStore.
func (s *Store) Journal(_ context.Context, maildrop string) ([]byte, error) {
	var j []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if b, _ := bucket(tx, maildrop, false); b != nil {
			if v := b.Get(journalKey); v != nil {
				j = append([]byte(nil), v...)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstate: %w", err)
	}
	return j, nil
}

// SetJournal implements proxy.StateStore.
func (s *Store) SetJournal(_ context.Context, maildrop string, journal []byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := bucket(tx, maildrop, true)
		if err != nil {
			return err
		}
		if journal == nil {
			return b.Delete(journalKey)
		}
		return b.Put(journalKey, journal)
	})
	if err != nil {
		return fmt.Errorf("boltstate: %w", err)
	}
	return nil
}
