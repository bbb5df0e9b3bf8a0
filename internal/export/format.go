package export

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"
)

// Format is how messages are laid out in the export directory.
type Format string

const (
	// EML is one file per message, the octets exactly as the store gave
	// them, in a directory per folder.
	EML Format = "eml"
	// Maildir is a Maildir++ tree: the first mailbox (INBOX) at the top,
	// the others as .Folder.Sub beside it, messages in cur/ with their
	// flags in the name. Lines end in LF, as Dovecot and mbsync store
	// them.
	Maildir Format = "maildir"
	// MBox is one mboxrd file per folder, lines ending in LF.
	MBox Format = "mbox"
)

// Formats lists the formats, the default first.
var Formats = []Format{EML, Maildir, MBox}

// folderPath is where a folder's messages go, relative to the export
// directory: a directory for eml and Maildir, a file for mbox.
func (f Format) folderPath(fo folder, inbox bool) string {
	parts := []string{fo.name}
	if fo.delim != 0 {
		parts = strings.Split(fo.name, string(fo.delim))
	}
	for i, p := range parts {
		parts[i] = safePathElem(p)
	}
	switch f {
	case Maildir:
		if inbox {
			return "."
		}
		// Maildir++: ".A.B"; a dot inside a name would make a level.
		for i, p := range parts {
			parts[i] = strings.ReplaceAll(p, ".", "_")
		}
		return "." + strings.Join(parts, ".")
	case MBox:
		return filepath.Join(parts...) + ".mbox"
	}
	return filepath.Join(parts...)
}

// safePathElem makes a mailbox name one file name: never empty, "." or
// "..", no separator, no NUL, and never starting with a dot, which
// Maildir++ reads as a folder.
func safePathElem(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == 0 || unicode.IsControl(r) {
			return '_'
		}
		return r
	}, s)
	if s == "" || strings.HasPrefix(s, ".") {
		s = "_" + s
	}
	return s
}

// emlName is the file name of a message in eml: it sorts by arrival
// date, shows the subject, and ends in the UIDL, which no other message of
// the folder has.
func emlName(m *message, subject string) string {
	name := m.date.UTC().Format("20060102-150405")
	if s := safeSubject(subject); s != "" {
		name += "_" + s
	}
	return name + "_" + m.uidl + ".eml"
}

// maildirBase is the unique part of a message's Maildir name; the flags
// follow it (":2,FS").
func maildirBase(m *message) string {
	return fmt.Sprintf("%d.U%s.export", m.date.Unix(), m.uidl)
}

// maildirName adds the Maildir flags (cr.yp.to/proto/maildir.html: the
// info "2," and the flag letters in ASCII order) for the IMAP flags.
func maildirName(m *message) string {
	var letters []byte
	for _, f := range m.flags {
		switch strings.ToLower(f) {
		case `\draft`:
			letters = append(letters, 'D')
		case `\flagged`:
			letters = append(letters, 'F')
		case `\answered`:
			letters = append(letters, 'R')
		case `\seen`:
			letters = append(letters, 'S')
		}
	}
	slices.Sort(letters)
	letters = slices.Compact(letters)
	return maildirBase(m) + ":2," + string(letters)
}

// maxSubject bounds the subject part of an eml name, in runes.
const maxSubject = 40

// safeSubject is the subject reduced to letters, digits and single
// dashes, short enough for any file system.
func safeSubject(s string) string {
	var b strings.Builder
	dash := false
	n := 0
	for _, r := range s {
		if n >= maxSubject {
			break
		}
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			if dash && b.Len() > 0 {
				b.WriteByte('-')
				n++
			}
			dash = false
			b.WriteRune(r)
			n++
			continue
		}
		dash = true
	}
	return b.String()
}

// subjectOf finds the Subject field in the start of a message and
// decodes its encoded words (RFC 2047); "" when there is none in head.
func subjectOf(head []byte) string {
	var field []byte
	in := false
	for len(head) > 0 {
		line, rest, _ := bytes.Cut(head, []byte("\n"))
		head = rest
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // end of the header
		}
		if line[0] == ' ' || line[0] == '\t' {
			if in {
				field = append(field, line...)
			}
			continue
		}
		if in {
			break
		}
		if k, v, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(k), "subject") {
			in = true
			field = append(field, v...)
		}
	}
	dec := mime.WordDecoder{}
	s, err := dec.DecodeHeader(string(field))
	if err != nil {
		s = string(field)
	}
	return strings.TrimSpace(s)
}

// mboxFrom is the separator line of a message in an mbox; the envelope
// sender is unknown, so MAILER-DAEMON, as Dovecot writes it.
func mboxFrom(date time.Time) string {
	return "From MAILER-DAEMON " + date.UTC().Format("Mon Jan _2 15:04:05 2006") + "\n"
}

// convert copies a message, turning CRLF into LF when lf is set and, for
// mboxrd, quoting every line that starts with ">*From " with one more
// ">" (so a reader removes exactly one); an mbox message also gets a
// final newline if it has none, and the blank line that ends it. Lines of
// any length stream through.
func convert(dst io.Writer, src io.Reader, lf, mboxrd bool) error {
	br := bufio.NewReaderSize(src, 64<<10)
	bw := bufio.NewWriterSize(dst, 64<<10)
	atStart, pendingCR, some := true, false, false
	endsNL := false
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			some = true
			if pendingCR {
				if !(lf && chunk[0] == '\n') {
					bw.WriteByte('\r')
				}
				pendingCR = false
			}
			if mboxrd && atStart && isFromLine(chunk) {
				bw.WriteByte('>')
			}
			switch {
			case lf && bytes.HasSuffix(chunk, []byte("\r\n")):
				bw.Write(chunk[:len(chunk)-2])
				bw.WriteByte('\n')
			case lf && chunk[len(chunk)-1] == '\r':
				bw.Write(chunk[:len(chunk)-1])
				pendingCR = true
			default:
				bw.Write(chunk)
			}
			atStart = chunk[len(chunk)-1] == '\n'
			endsNL = atStart
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if pendingCR {
		bw.WriteByte('\r')
		endsNL = false
	}
	if mboxrd {
		if some && !endsNL {
			bw.WriteByte('\n')
		}
		bw.WriteByte('\n')
	}
	return bw.Flush()
}

// isFromLine tells whether a line is ">*From " (mboxrd).
func isFromLine(line []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(line, ">"), []byte("From "))
}
