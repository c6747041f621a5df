# runbook: the targets the README names.
GO        ?= go
# Go 1.27.3, which the go command fetches from the module proxy once (76 MB):
# Go 1.26.8's standard library has known vulnerabilities in net/http,
# crypto/tls and crypto/x509 (.ci/vulncheck.sh). Machines here default to
# GOTOOLCHAIN=local and ignore go.mod's toolchain line.
GOTOOLCHAIN ?= go1.27.3
export GOTOOLCHAIN
BIN       := bin
PKGS      := ./...
FUZZTIME  ?= 10s
LABDIR    ?= .lab
GATEWAYS  ?= 3
KEYS      ?= 50
DEMO_RUNBOOK ?= compromise-master

.PHONY: all build test test-short lint vet fuzz golden lab lab-down demo bench clean tools

all: build

## build: bin/runbook and the lab's programs
build:
	$(GO) build -o $(BIN)/runbook ./cmd/runbook
	$(GO) build -o $(BIN)/runbook-lab ./cmd/runbook-lab
	$(GO) build -o $(BIN)/litellm-gateway ./cmd/litellm-gateway

## test: vet, then every test with the race detector (needs the lab's packages; see .ci/run)
test: vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

## test-short: the tests that need no lab
test-short:
	$(GO) test -short -count=1 $(PKGS)

vet:
	$(GO) vet $(PKGS)

## lint: vet, gofmt, staticcheck and govulncheck (installed from the module proxy, at fixed versions; govulncheck against Go's vulnerability database built from the proxy's golang.org/x/vulndb, see .ci/vulncheck.sh)
lint: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)
	./.ci/vulncheck.sh

## fuzz: every fuzz target for FUZZTIME each
fuzz:
	./.ci/fuzz.sh $(FUZZTIME)

## golden: regenerate golden files (invalid-input messages, plans, records)
golden:
	$(GO) test ./internal/runbook/... ./internal/inventory/... ./internal/cli/... -update

## lab: bring up the local lab (gateways, nginx, PostgreSQL, Vault) and print how to use it
lab: build
	$(BIN)/runbook-lab up --dir $(LABDIR) --gateways $(GATEWAYS) --keys $(KEYS)

## lab-down: tear the lab down, leaving no namespace, process or veth behind
lab-down:
	-$(BIN)/runbook-lab down --dir $(LABDIR) || $(GO) run ./cmd/runbook-lab down --dir $(LABDIR)

## demo: bring up the lab, run the main job against it, print the incident record
demo: build
	$(BIN)/runbook-lab up --dir $(LABDIR) --gateways $(GATEWAYS) --keys $(KEYS)
	set -a && . $(LABDIR)/env && set +a && \
	  $(BIN)/runbook exec $(DEMO_RUNBOOK) -i $(LABDIR)/inventory.yaml --state $(LABDIR)/state --records $(LABDIR)/records --yes --reason "lab demo"; \
	  status=$$?; $(BIN)/runbook record --last --state $(LABDIR)/state; exit $$status

## bench: benchmarks against the lab (containment, plan, re-issue, compromise-master, rotation under load, peak RSS); writes internal/bench/BENCHMARKS.md and results.json
bench: build
	RUNBOOK_BENCH=full $(GO) test -run '^TestBench$$' -count=1 -v -timeout 120m ./internal/bench/

## reliability: the crash matrix of compromise-master and rotate-master, the faults and the leak scan against the lab (RELIABILITY=smoke for a handful of crash points); see internal/reliability/RELIABILITY.md
RELIABILITY ?= full
.PHONY: reliability
reliability:
	RUNBOOK_RELIABILITY=$(RELIABILITY) $(GO) test -count=1 -run 'TestReliability|TestLeakScan|TestLeakWatch' -v -timeout 120m ./internal/cli

clean:
	rm -rf $(BIN)
