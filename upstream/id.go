package upstream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
)

type clientAddrKey struct{}

// WithClient returns a context for dialing on behalf of the client at
// addr: a Server with SendClientIP tells the server about it.
func WithClient(ctx context.Context, addr netip.AddrPort) context.Context {
	return context.WithValue(ctx, clientAddrKey{}, addr)
}

func clientFrom(ctx context.Context) (netip.AddrPort, bool) {
	addr, ok := ctx.Value(clientAddrKey{}).(netip.AddrPort)
	return addr, ok && addr.IsValid()
}

// maxIntroLine bounds each line read while introducing the client.
const maxIntroLine = 64 << 10

// introduce starts TLS on a STARTTLS connection and tells the server,
// before any login, which client the connection is for (when client is
// valid): IMAP ID (RFC 2971) with x-originating-ip and
// x-originating-port, which Dovecot honours from login_trusted_networks
// and uses for its per-address login penalty and logs instead of the
// gateway's address. go-imap's ID command has no field for these keys,
// so the greeting, STARTTLS (RFC 9051 §6.2.1; ID must not travel in
// clear when TLS was asked for) and ID are done here, and the returned
// connection hands the IMAP client a plain greeting: it then asks for the
// capabilities itself. A server that does not advertise ID gets none, and
// one that refuses it is used all the same.
func introduce(nc net.Conn, startTLS bool, tlsConfig *tls.Config, client netip.AddrPort) (net.Conn, error) {
	br := bufio.NewReader(nc)
	greeting, err := readResponseLine(br)
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	switch {
	case bytes.HasPrefix(greeting, []byte("* OK")):
	case bytes.HasPrefix(greeting, []byte("* PREAUTH")):
		if startTLS {
			// RFC 9051 §7.1.4: a PREAUTH where STARTTLS was wanted may be
			// a man in the middle keeping the connection in clear.
			return nil, errors.New("greeting: PREAUTH on a connection that must start TLS")
		}
		// Nothing to log in to: the ID would change nothing.
		return &replayConn{Conn: nc, r: io.MultiReader(bytes.NewReader(append(greeting, "\r\n"...)), br)}, nil
	default:
		return nil, fmt.Errorf("greeting: %q", truncate(greeting))
	}
	caps := capabilities(greeting)
	if startTLS {
		if _, err := command(nc, br, "g1 STARTTLS", true); err != nil {
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
		if br.Buffered() > 0 {
			// Responses sent ahead of the handshake could have been
			// injected in clear by a man in the middle (the client side
			// of the CVE-2011-0411 class).
			return nil, errors.New("STARTTLS: data before the TLS handshake")
		}
		tc := tls.Client(nc, tlsConfig)
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("STARTTLS: %w", err)
		}
		nc = tc
		br = bufio.NewReader(nc)
		caps = nil // RFC 9051 §6.2.1: ask again after STARTTLS
	}
	if !client.IsValid() {
		return &replayConn{Conn: nc, r: io.MultiReader(bytes.NewReader([]byte("* OK Gateway: TLS started\r\n")), br)}, nil
	}
	if caps == nil {
		untagged, err := command(nc, br, "g2 CAPABILITY", true)
		if err != nil {
			return nil, fmt.Errorf("CAPABILITY: %w", err)
		}
		for _, line := range untagged {
			if rest, ok := bytes.CutPrefix(line, []byte("* CAPABILITY ")); ok {
				caps = bytes.Fields(bytes.ToUpper(rest))
			}
		}
	}
	// Only to a server that advertises the ID capability (RFC 2971).
	if slices.ContainsFunc(caps, func(c []byte) bool { return string(c) == "ID" }) {
		id := fmt.Sprintf(`g3 ID ("x-originating-ip" %q "x-originating-port" "%d")`, client.Addr().Unmap().String(), client.Port())
		if _, err := command(nc, br, id, false); err != nil {
			return nil, fmt.Errorf("ID: %w", err)
		}
	}
	return &replayConn{Conn: nc, r: io.MultiReader(bytes.NewReader([]byte("* OK Gateway: client introduced\r\n")), br)}, nil
}

// capabilities returns the upper-cased capabilities of a greeting's
// CAPABILITY response code, nil if it has none.
func capabilities(greeting []byte) [][]byte {
	_, rest, ok := bytes.Cut(bytes.ToUpper(greeting), []byte("[CAPABILITY "))
	if !ok {
		return nil
	}
	list, _, _ := bytes.Cut(rest, []byte("]"))
	return bytes.Fields(list)
}

// command sends line and reads up to its tagged response, returning the
// untagged lines before it; with mustOK, anything but OK is an error.
func command(nc net.Conn, br *bufio.Reader, line string, mustOK bool) ([][]byte, error) {
	if _, err := io.WriteString(nc, line+"\r\n"); err != nil {
		return nil, err
	}
	tag, _, _ := bytes.Cut([]byte(line), []byte(" "))
	tag = append(tag, ' ')
	var untagged [][]byte
	for range 1000 {
		resp, err := readResponseLine(br)
		if err != nil {
			return nil, err
		}
		if !bytes.HasPrefix(resp, tag) {
			untagged = append(untagged, resp)
			continue
		}
		if status := resp[len(tag):]; mustOK && !bytes.HasPrefix(status, []byte("OK")) {
			return nil, fmt.Errorf("%q", truncate(resp))
		}
		return untagged, nil
	}
	return nil, errors.New("no tagged response")
}

// readResponseLine reads one response line without its CRLF, taking in
// the literals ({n} CRLF and n octets) it carries.
func readResponseLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		part, err := br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		line = append(line, part...)
		if len(line) > maxIntroLine {
			return nil, errors.New("response line too long")
		}
		if err != nil {
			continue
		}
		line = bytes.TrimRight(line, "\r\n")
		open := bytes.LastIndexByte(line, '{')
		if open < 0 || line[len(line)-1] != '}' { // open >= 0: line is not empty
			return line, nil
		}
		n, err := strconv.Atoi(string(bytes.TrimSuffix(line[open+1:len(line)-1], []byte("+"))))
		if err != nil || n < 0 || len(line)+n > maxIntroLine {
			return line, nil
		}
		lit := make([]byte, n)
		if _, err := io.ReadFull(br, lit); err != nil {
			return nil, err
		}
		line = append(line, lit...)
	}
}

func truncate(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

// replayConn reads from r (what was read ahead, then the connection) and
// writes to the connection.
type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }
