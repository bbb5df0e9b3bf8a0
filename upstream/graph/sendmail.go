package graph

import (
	"context"
	"encoding/base64"
	"fmt"
)

// MaxSendRequest is the largest sendMail request Graph takes: 4 MB
// (user-sendmail: a larger request is refused 413; attachments above it
// need an upload session, which a MIME message cannot use).
const MaxSendRequest = 4 << 20

// MaxSendMIME is the largest MIME message SendMail posts: its base64 form
// (4 octets for every 3) must fit in MaxSendRequest.
const MaxSendMIME = MaxSendRequest / 4 * 3

// SendMail sends a message given as MIME, as it stands, from the token's
// user (user-sendmail, "Send a new message using MIME format";
// outlook-send-mime-message): POST /me/sendMail with the message in
// base64 as a text/plain body, answered 202 Accepted. Graph takes the
// recipients from the To, Cc and Bcc headers and saves a copy in Sent
// Items.
//
// A refused token is refreshed once, as for every call. A throttled or
// unavailable answer is not waited out but returned at once, as an Error
// of kind ErrTemporary with the Retry-After Graph asked for: the client
// that submitted the message is waiting for an answer and can try again.
func (c *Client) SendMail(ctx context.Context, mime []byte) error {
	if len(mime) > MaxSendMIME {
		return &Error{Op: "send", Status: 413, Code: "messageTooLarge"}
	}
	text := make([]byte, base64.StdEncoding.EncodedLen(len(mime)))
	base64.StdEncoding.Encode(text, mime)
	resp, err := c.do(ctx, request{op: "send", method: "POST", path: "/me/sendMail", text: text, once: true})
	if err != nil {
		return err
	}
	defer c.release(resp)
	if resp.StatusCode != 202 {
		// Any other 2xx is not the documented answer: the message may
		// or may not have been taken.
		return fmt.Errorf("%w: sendMail answered HTTP %d, not 202", ErrBadResponse, resp.StatusCode)
	}
	return nil
}
