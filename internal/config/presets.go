package config

import (
	"slices"

	"github.com/pop3gw/gateway/upstream"
)

// Preset is what a provider key fills in on an upstream: values the file
// leaves empty take these.
type Preset struct {
	Protocol string // ProtocolIMAP when empty
	Address  string
	TLS      upstream.Security
	Auth     string              // the mechanism the provider expects by default
	OnDelete upstream.DeleteMode // the on_delete value that really removes a message from the inbox
	// Trash is the provider's trash mailbox, used when the server marks no
	// mailbox \Trash (RFC 6154).
	Trash string
	// OAuth2 endpoints and scopes; empty when the provider offers OAuth2
	// for IMAP only to approved partners, or not at all.
	AuthURL, TokenURL, DeviceAuthURL string
	Scopes                           []string
}

// Presets are the known providers. Each on_delete default is trash: a
// message deleted by a POP3 client lands where one deleted in the
// provider's own web mail lands, and the provider empties it later. On
// Gmail it is also the only value that deletes at all: an EXPUNGE from
// INBOX only archives the message ("All Mail" keeps it).
var Presets = map[string]Preset{
	"gmail": {
		Address: "imap.gmail.com:993", TLS: upstream.SecurityImplicit, Auth: AuthXOAuth2,
		OnDelete: upstream.DeleteTrash, Trash: "[Gmail]/Trash",
		AuthURL:  "https://accounts.google.com/o/oauth2/auth",
		TokenURL: "https://oauth2.googleapis.com/token",
		// Google's device grant does not allow the mail scope, so the
		// first authorisation is a code grant with PKCE.
		Scopes: []string{"https://mail.google.com/"},
	},
	"outlook": {
		Address: "outlook.office365.com:993", TLS: upstream.SecurityImplicit, Auth: AuthXOAuth2,
		OnDelete: upstream.DeleteTrash, Trash: "Deleted Items",
		AuthURL:       "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
		TokenURL:      "https://login.microsoftonline.com/common/oauth2/v2.0/token",
		DeviceAuthURL: "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
		Scopes:        []string{"https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"},
	},
	"yahoo": {
		Address: "imap.mail.yahoo.com:993", TLS: upstream.SecurityImplicit, Auth: AuthPassword,
		OnDelete: upstream.DeleteTrash, Trash: "Trash",
		AuthURL:  "https://api.login.yahoo.com/oauth2/request_auth",
		TokenURL: "https://api.login.yahoo.com/oauth2/get_token",
		Scopes:   []string{"mail-w"},
	},
	"aol": {
		Address: "imap.aol.com:993", TLS: upstream.SecurityImplicit, Auth: AuthPassword,
		OnDelete: upstream.DeleteTrash, Trash: "Trash",
		AuthURL:  "https://api.login.aol.com/oauth2/request_auth",
		TokenURL: "https://api.login.aol.com/oauth2/get_token",
		Scopes:   []string{"mail-w"},
	},
	"icloud": {
		Address: "imap.mail.me.com:993", TLS: upstream.SecurityImplicit, Auth: AuthPassword,
		OnDelete: upstream.DeleteTrash, Trash: "Deleted Messages",
	},
	"fastmail": {
		Address: "imap.fastmail.com:993", TLS: upstream.SecurityImplicit, Auth: AuthPassword,
		OnDelete: upstream.DeleteTrash, Trash: "Trash",
	},
	// Fastmail through JMAP (RFC 8620/8621), its own API, with an app
	// password (HTTP Basic). Trash is used when no mailbox has role
	// trash.
	"fastmail-jmap": {
		Protocol: ProtocolJMAP, Address: "https://api.fastmail.com/jmap/session", Auth: AuthPassword,
		OnDelete: upstream.DeleteTrash, Trash: "Trash",
	},
	// Microsoft 365 mailboxes through Microsoft Graph, for tenants that
	// turned IMAP off. Trash is the well-known name of Deleted Items
	// (graph/api/message-move). Mail.Send is for the submission relay.
	"microsoft365-graph": {
		Protocol: ProtocolGraph, Address: "https://graph.microsoft.com/v1.0", Auth: AuthOAuth2,
		OnDelete: upstream.DeleteTrash, Trash: "deleteditems",
		AuthURL:       "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
		TokenURL:      "https://login.microsoftonline.com/common/oauth2/v2.0/token",
		DeviceAuthURL: "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode",
		Scopes:        []string{"https://graph.microsoft.com/Mail.ReadWrite", "https://graph.microsoft.com/Mail.Send", "offline_access"},
	},
}

func (p Preset) protocol() string {
	if p.Protocol == "" {
		return ProtocolIMAP
	}
	return p.Protocol
}

// Providers lists the accepted values of an upstream's provider key.
var Providers = []string{"gmail", "outlook", "yahoo", "icloud", "fastmail", "aol", "fastmail-jmap", "microsoft365-graph"}

// fill sets *dst to v when it is empty.
func fill[T ~string](dst *T, v T) {
	if *dst == "" {
		*dst = v
	}
}

// applyPreset fills the upstream's empty values from its provider's preset.
// An unknown provider is left for Validate to report.
func applyPreset(u *Upstream) {
	p, ok := Presets[u.Provider]
	if !ok {
		return
	}
	fill(&u.Protocol, p.protocol())
	if u.Protocol != p.protocol() {
		// A preset of another protocol fills nothing; Validate says so.
		return
	}
	fill(&u.Address, p.Address)
	fill(&u.TLS, p.TLS)
	fill(&u.Auth, p.Auth)
	fill(&u.OnDelete, p.OnDelete)
	fill(&u.TrashMailbox, p.Trash)
	if !u.OAuthEnabled() || p.TokenURL == "" {
		return
	}
	if u.OAuth2 == nil {
		u.OAuth2 = &OAuth2{}
	}
	o := u.OAuth2
	fill(&o.AuthURL, p.AuthURL)
	fill(&o.TokenURL, p.TokenURL)
	fill(&o.DeviceAuthURL, p.DeviceAuthURL)
	if len(o.Scopes) == 0 {
		o.Scopes = slices.Clone(p.Scopes)
	}
}
