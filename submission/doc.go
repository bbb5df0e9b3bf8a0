// Package submission is the gateway's SMTP submission door (RFC 6409):
// devices log in with the same credentials as for POP3 and their mail is
// relayed, in step with their own transaction, to the submission server
// of the account the login maps to. Nothing is spooled: MAIL, RCPT and
// DATA are each answered only after the upstream answered them, with its
// reply code, so a message is either accepted by the upstream or refused
// to the client, never held in between.
//
// The package knows nothing of POP3, IMAP or the gateway's configuration:
// a Backend turns a login into an Account (an upstream endpoint, its
// credentials and the senders the login may use). An Account may carry a
// Mailer instead, an API that takes whole messages (Microsoft Graph's
// sendMail): DATA is then read whole, up to the API's limit, and
// answered with the API's answer.
package submission
