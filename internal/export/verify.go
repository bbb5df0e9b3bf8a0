package export

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// verifyFolder reads every recorded message of the folder that the store
// still holds from the store again, converts it as it was written, and
// compares size and SHA-256 with the file (for mbox, the file's range).
// A difference or a missing file is a failure; the message is then
// forgotten, so the next run writes it again.
func (e *exporter) verifyFolder(ctx context.Context, l *listing) error {
	var msgs []*message
	recs := make(map[*message]*record)
	for i := range l.msgs {
		m := &l.msgs[i]
		if r := e.j.records[recordKey(l.folder.name, m.identity)]; r != nil {
			msgs = append(msgs, m)
			recs[m] = r
		}
	}
	src, err := e.session(ctx, 0, l)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	for _, batch := range e.batches(msgs) {
		seen := make(map[*message]bool)
		err := src.fetch(ctx, batch, func(m *message, body io.Reader) error {
			seen[m] = true
			return e.verifyOne(l.folder, m, recs[m], body)
		})
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		for _, m := range batch {
			if !seen[m] {
				e.mu.Lock()
				e.sum.Gone++
				e.mu.Unlock()
			}
		}
	}
	return nil
}

func (e *exporter) verifyOne(fo folder, m *message, r *record, body io.Reader) error {
	h := sha256.New()
	cw := &countWriter{w: h}
	var err error
	if e.opts.Format == MBox {
		io.WriteString(cw, mboxFrom(m.date))
	}
	if e.opts.Format == EML {
		_, err = io.Copy(cw, body)
	} else {
		err = convert(cw, body, true, e.opts.Format == MBox)
	}
	if err != nil {
		return err
	}
	want := hex.EncodeToString(h.Sum(nil))
	got, size, ferr := fileDigest(filepath.Join(e.opts.Dir, r.File), r)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sum.Fetched++
	var why string
	switch {
	case ferr != nil:
		why = ferr.Error()
	case size != cw.n:
		why = fmt.Sprintf("the file holds %d octets, the store %d", size, cw.n)
	case got != want:
		why = "the file differs from the store's message (SHA-256)"
	case r.SHA256 != want:
		why = "the store's message changed since it was exported"
	}
	if why != "" {
		e.sum.Failures = append(e.sum.Failures, Failure{Folder: fo.name, UIDL: m.uidl, Reason: "verify: " + why})
		if err := e.j.forget(r.Folder, r.Identity); err != nil {
			return local(err)
		}
		return nil
	}
	e.sum.Verified++
	return nil
}

// fileDigest is the SHA-256 and length of a recorded message's octets.
func fileDigest(path string, r *record) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	var in io.Reader = f
	if r.End > 0 {
		in = io.NewSectionReader(f, r.Offset, r.End-r.Offset)
	}
	h := sha256.New()
	n, err := io.Copy(h, in)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
