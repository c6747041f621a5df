package local_test

import (
	"testing"

	"github.com/runbook-dev/runbook/internal/transport/local"
	"github.com/runbook-dev/runbook/internal/transport/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, local.New("local"))
}
