// Command gateway serves POP3 clients from IMAP mailboxes.
//
// Usage:
//
//	gateway serve -config FILE    run the service
//	gateway demo                  try it against built-in sample mail
//	gateway check -config FILE    validate the config and test upstream logins
//	gateway hash-password         hash a password for the config file
//	gateway oauth2 login -config FILE -user NAME
//	                              authorise the gateway for a user's OAuth2 upstream
//	gateway secrets new-key       create the key that seals stored secrets
//	gateway export -config FILE -user NAME -to DIR
//	                              copy a user's mail to .eml files, a Maildir or mbox
//	gateway version               print version information
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `usage: gateway <command> [flags]

commands:
  serve -config FILE   run the POP3 gateway
  demo                 run against built-in sample mail on 127.0.0.1:1110
  check -config FILE   validate the config and log in to each upstream account
  hash-password        read a password on stdin and print its hash
  oauth2 login -config FILE -user NAME
                       authorise the gateway for a user's OAuth2 upstream account
  secrets new-key [-out FILE]
                       create the key that seals stored tokens and passwords
  secrets set-password -config FILE -user NAME
                       seal a user's upstream password into its upstream_password_file
  export -config FILE -user NAME -to DIR [-format eml|maildir|mbox] [-mailbox NAME | -all]
         [-since DATE] [-limit-rate BYTES/s] [-connections N] [-verify]
  export -provider NAME -login ADDRESS -to DIR [...]
                       copy an account's mail to .eml files, a Maildir or mbox (incremental, resumable)
  healthcheck [-url URL]
                       exit 0 if a running gateway's /healthz answers 200 (for containers)
  version              print version, commit and Go version
`

func run(args []string, stdin *os.File, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serveCmd(args[1:], stderr)
	case "demo":
		return demoCmd(args[1:], stdout, stderr)
	case "check":
		return checkCmd(args[1:], stdout, stderr)
	case "hash-password":
		return hashPasswordCmd(args[1:], stdin, stdout, stderr)
	case "oauth2":
		return oauth2Cmd(args[1:], stdin, stdout, stderr)
	case "secrets":
		return secretsCmd(args[1:], stdin, stdout, stderr)
	case "healthcheck":
		return healthcheckCmd(args[1:], stdout, stderr)
	case "export":
		return exportCmd(args[1:], stdin, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "gateway: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func versionString() string {
	commit := "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				commit = s.Value
				if len(commit) > 12 {
					commit = commit[:12]
				}
			}
		}
	}
	return fmt.Sprintf("gateway %s (commit %s, %s, %s/%s)", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
