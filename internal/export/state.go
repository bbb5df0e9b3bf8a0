package export

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pop3gw/gateway/internal/durable"
)

// stateName is the state file in the export directory: an append-only
// journal, one JSON object a line. The first line names the format;
// every other records one message written whole. A line cut short by a
// crash is dropped when the journal is opened.
const stateName = ".gateway-export"

type stateHeader struct {
	Format  Format `json:"format"`
	Version int    `json:"version"`
}

// record is one exported message.
type record struct {
	Folder   string `json:"folder"`
	Identity string `json:"id"`
	File     string `json:"file"` // relative to the export directory
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
	// Offset is where the message starts in an mbox file; End is where
	// the file ends after it, which the next run truncates the file to
	// should a crash leave more.
	Offset int64 `json:"offset,omitempty"`
	End    int64 `json:"end,omitempty"`
	// Forget undoes the folder and identity's earlier record: verify
	// found the file wrong, so the next run writes it again.
	Forget bool `json:"forget,omitempty"`
}

// journal is the state file, open for appending.
type journal struct {
	f       *os.File
	format  Format
	records map[string]*record // by folder and identity
	dirty   bool
}

func recordKey(folder, identity string) string { return folder + "\x00" + identity }

// errFormatMismatch: the directory holds an export in another format.
var errFormatMismatch = errors.New("format mismatch")

// errBusy: another export is writing to the directory.
var errBusy = errors.New("another export is writing to this directory")

// openJournal opens or creates the state file in dir.
func openJournal(dir string, format Format) (*journal, error) {
	path := filepath.Join(dir, stateName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockState(f); err != nil {
		f.Close()
		return nil, err
	}
	j := &journal{f: f, format: format, records: make(map[string]*record)}
	good, err := j.load()
	if err != nil {
		f.Close()
		return nil, err
	}
	// Drop whatever follows the last whole line: a write cut short.
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	if good == 0 {
		line, _ := json.Marshal(stateHeader{Format: format, Version: 1})
		if err := j.append(line); err != nil {
			f.Close()
			return nil, err
		}
		if err := j.sync(); err != nil {
			f.Close()
			return nil, err
		}
		if err := durable.Sync(dir); err != nil {
			f.Close()
			return nil, err
		}
	}
	return j, nil
}

// load reads the journal and returns the length of its whole lines.
func (j *journal) load() (int64, error) {
	br := bufio.NewReader(j.f)
	var good int64
	first := true
	for {
		line, err := br.ReadBytes('\n')
		if err == io.EOF {
			return good, nil // a last line without newline was cut short
		}
		if err != nil {
			return 0, err
		}
		body := bytes.TrimSpace(line)
		if first {
			var h stateHeader
			if json.Unmarshal(body, &h) != nil || h.Format == "" {
				return 0, fmt.Errorf("%s is not an export state file", stateName)
			}
			if h.Format != j.format {
				return 0, fmt.Errorf("%w: the directory holds a %s export, not %s", errFormatMismatch, h.Format, j.format)
			}
			first = false
		} else {
			var r record
			if err := json.Unmarshal(body, &r); err != nil {
				return good, nil // a torn line: what follows is not trusted
			}
			if r.Forget {
				delete(j.records, recordKey(r.Folder, r.Identity))
			} else {
				j.records[recordKey(r.Folder, r.Identity)] = &r
			}
		}
		good += int64(len(line))
	}
}

func (j *journal) has(folder, identity string) bool {
	return j.records[recordKey(folder, identity)] != nil
}

// add records a message written whole. The line reaches the file at once,
// so a killed process keeps it; sync makes it durable across a power
// loss.
func (j *journal) add(r record) error {
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := j.append(line); err != nil {
		return err
	}
	j.records[recordKey(r.Folder, r.Identity)] = &r
	return nil
}

// forget records that the message must be written again.
func (j *journal) forget(folder, identity string) error {
	line, err := json.Marshal(record{Folder: folder, Identity: identity, Forget: true})
	if err != nil {
		return err
	}
	delete(j.records, recordKey(folder, identity))
	return j.append(line)
}

func (j *journal) append(line []byte) error {
	j.dirty = true
	_, err := j.f.Write(append(line, '\n'))
	return err
}

func (j *journal) sync() error {
	if !j.dirty {
		return nil
	}
	j.dirty = false
	return j.f.Sync()
}

// folderRecords lists the folder's records.
func (j *journal) folderRecords(folder string) []*record {
	var out []*record
	for _, r := range j.records {
		if r.Folder == folder {
			out = append(out, r)
		}
	}
	return out
}

func (j *journal) close() error {
	err := j.sync()
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	return err
}
