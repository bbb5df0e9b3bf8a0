package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// The helpers below call the package's functions as the gateway's command
// line does, and give the exit status and error lines of that command, so
// a test reads as the command an operator types.

// serveExit is `gateway serve -config path` for a config that does not
// start: the error is logged to stderr as serve logs it.
func serveExit(path string, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := Start(context.Background(), Options{Config: path, Logger: log})
	if err != nil {
		log.Error("gateway stopped", "err", err)
		return 1
	}
	s.Shutdown(context.Background())
	return 0
}

// checkExit is `gateway check -config path`.
func checkExit(path string, stdout, stderr io.Writer) int {
	if err := Check(context.Background(), path, stdout); err != nil {
		if !errors.Is(err, ErrCheckFailed) {
			fmt.Fprintln(stderr, err)
		}
		return 1
	}
	return 0
}

// newKeyExit is `gateway secrets new-key -out out`.
func newKeyExit(out string, stdout, stderr io.Writer) int {
	if err := NewKey(out, stdout); err != nil {
		fmt.Fprintln(stderr, "gateway secrets new-key:", err)
		return 1
	}
	return 0
}

// setPasswordExit is `gateway secrets set-password -config path -user user`.
func setPasswordExit(path, user string, stdin *os.File, stdout, stderr io.Writer) int {
	if err := SetPassword(path, user, stdin, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "gateway secrets set-password:", err)
		return 1
	}
	return 0
}

// healthcheckExit is `gateway healthcheck -url url`.
func healthcheckExit(url string, stdout, stderr io.Writer) int {
	if err := Healthcheck(url, 5*time.Second, stdout); err != nil {
		fmt.Fprintln(stderr, "gateway healthcheck:", err)
		return 1
	}
	return 0
}

// oauth2LoginExit is `gateway oauth2 login` with opts.
func oauth2LoginExit(opts OAuth2Login, stdin io.Reader, stdout, stderr io.Writer) int {
	if err := AuthorizeOAuth2(context.Background(), opts, stdin, stdout); err != nil {
		fmt.Fprintln(stderr, "gateway oauth2 login:", err)
		return 1
	}
	return 0
}

// oauth2LoginArgs reads the flags of `gateway oauth2 login` from args
// ("oauth2", "login", then -config, -user and -flow with their values).
func oauth2LoginArgs(args []string) OAuth2Login {
	opts := OAuth2Login{Flow: "auto"}
	for i := 2; i+1 < len(args); i += 2 {
		switch args[i] {
		case "-config":
			opts.Config = args[i+1]
		case "-user":
			opts.User = args[i+1]
		case "-flow":
			opts.Flow = args[i+1]
		}
	}
	return opts
}
