package proxy_test

import (
	"testing"

	"github.com/pop3gw/gateway/internal/testkit/statetest"
	"github.com/pop3gw/gateway/proxy"
)

func TestMemoryState(t *testing.T) {
	statetest.Run(t, func(*testing.T) proxy.StateStore { return proxy.NewMemoryState() })
}
