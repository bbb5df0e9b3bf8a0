package logging

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestParseLevel(t *testing.T) {
	for name, want := range map[string]slog.Level{
		"trace": LevelTrace, "TRACE": LevelTrace, "debug": slog.LevelDebug,
		"info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
		"DEBUG-2": slog.LevelDebug - 2,
	} {
		got, err := ParseLevel(name)
		if err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	if _, err := ParseLevel("verbose"); err == nil {
		t.Error("ParseLevel accepted verbose")
	}
	if LevelTrace >= slog.LevelDebug {
		t.Error("trace is not below debug")
	}
}

func TestTraceLevelName(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: LevelTrace, ReplaceAttr: ReplaceAttr}))
	log.Log(context.Background(), LevelTrace, "recv", "line", "NOOP")
	log.Debug("debug")
	out := buf.String()
	if !strings.Contains(out, "level=TRACE msg=recv line=NOOP") || !strings.Contains(out, "level=DEBUG msg=debug") {
		t.Errorf("log = %q", out)
	}
}
