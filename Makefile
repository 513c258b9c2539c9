# tpmauthn — run `make` for the list of targets.
.DEFAULT_GOAL := help
GO        ?= go
FUZZTIME  ?= 20s
BIN       := bin

.PHONY: help build man deb demo install test test-short lint fuzz bench bench-quick interop browser-client clean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build the binaries into bin/ (--version names the commit)
	$(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/... ./examples/...

man: build ## man pages and shell completions of the three commands, into bin/docs/
	for b in tpmauthn-agent tpmauthn-verifier tpmauthnctl; do $(BIN)/$$b docs $(BIN)/docs; done

DEB_VERSION ?= 0.1.0~git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0)
deb: ## Debian packages (tpmauthn-agent, tpmauthn-verifier, tpmauthnctl) into bin/deb/ (DEB_VERSION=...)
	$(GO) run ./packaging/mkdeb -version $(DEB_VERSION) -out $(BIN)/deb

demo: build ## the whole chain on this machine: swtpm, verifier, agent, a workload on NATS
	./scripts/demo.sh

test: ## run every test (needs swtpm: see README) with the race detector
	$(GO) test -race -count=1 -timeout 12m ./...

test-short: ## unit tests only, no swtpm
	$(GO) test -short -count=1 ./...

lint: ## go vet and a gofmt check
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fuzz: ## fuzz every parser of untrusted bytes for FUZZTIME each
	$(GO) test ./attestation -run '^$$' -fuzz '^FuzzUnmarshalBundle$$' -fuzztime $(FUZZTIME)
	$(GO) test ./attestation -run '^$$' -fuzz '^FuzzParseAuthenticatorData$$' -fuzztime $(FUZZTIME)
	$(GO) test ./attestation -run '^$$' -fuzz '^FuzzParseCOSEKey$$' -fuzztime $(FUZZTIME)
	$(GO) test ./audit -run '^$$' -fuzz '^FuzzVerifyChain$$' -fuzztime $(FUZZTIME)
	$(GO) test ./verifier/natsapi -run '^$$' -fuzz '^FuzzDecodeRequests$$' -fuzztime $(FUZZTIME)
	$(GO) test ./verifier/policy -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./verifier/oidclogin -run '^$$' -fuzz '^FuzzLoginRequests$$' -fuzztime $(FUZZTIME)
	$(GO) test ./agent -run '^$$' -fuzz '^FuzzSocketRequests$$' -fuzztime $(FUZZTIME)
	$(GO) test ./verifier/scim -run '^$$' -fuzz '^FuzzPatch$$' -fuzztime $(FUZZTIME)

bench: ## benchmarks: TPM operations, the whole chain, revocation, enrollment, audit (swtpm)
	$(GO) test ./agent/tpm ./agent -run '^$$' -bench . -benchtime 20x
	$(GO) test ./verifier/auditlog ./verifier/keys ./verifier/store -run '^$$' -bench 'AuditAppend|IssuerSign|CounterWrite' -benchtime 2000x
	$(GO) test ./verifier -run '^$$' -bench Enrollment -benchtime 5x
	$(GO) test ./attestation -run '^$$' -bench . -benchtime 2000x
	@mkdir -p $(BIN)
	BENCH_RESULTS_DIR=$(abspath $(BIN)) $(GO) test ./e2e -run '^$$' -bench Chain -benchtime 1000x
	BENCH_RESULTS_DIR=$(abspath $(BIN)) $(GO) test ./e2e -run '^$$' -bench RevokeToDisconnect -benchtime 1x
	BENCH_RESULTS_DIR=$(abspath $(BIN)) $(GO) test ./e2e -run '^$$' -bench People -benchtime 600x
	BENCH_RESULTS_DIR=$(abspath $(BIN)) $(GO) test ./e2e -run '^$$' -bench HostStorm -benchtime 1x
	$(GO) build -o $(BIN)/tpmauthn-bench ./cmd/tpmauthn-bench
	$(BIN)/tpmauthn-bench $(BIN)

chaos: ## the fault campaign under connect load: nodes, servers and verifiers killed, swtpm lost, the store full, the agent killed, a restore; one row a fault (CHAOS=full: every node)
	@mkdir -p $(BIN)
	@echo "fault campaign: log in $(BIN)/chaos.log"
	@TPMAUTHN_CHAOS=$(or $(CHAOS),1) $(GO) test -count=1 -timeout 15m ./e2e -run '^(TestChaos|TestChaosExternalCluster|TestTPMLostAndBack|TestStoreFull|TestAgentKilledDuringRegistration|TestAgentKilledDuringRotation|TestBackupRestore)$$' -v > $(BIN)/chaos.log 2>&1; rc=$$?; \
	  echo "| fault | connects attempted | granted | denied | errored | s to recovery |"; echo "|---|---|---|---|---|---|"; \
	  grep -v 'fleet.go:' $(BIN)/chaos.log | grep -E '^\s+\| ' | grep -vE '\| fault \||\|---' | sed -E 's/^\s+//'; \
	  grep -v 'fleet.go:' $(BIN)/chaos.log | grep -E 'records lost|^(--- |ok|FAIL)' | sed -E 's/^\s+//'; exit $$rc

bench-quick: ## the connect-path harness, everything small (< 1 min; CI runs it so it cannot rot)
	@mkdir -p $(BIN)
	BENCH_RESULTS_DIR=$(abspath $(BIN)) $(GO) test ./e2e -run '^$$' -bench 'Chain|RevokeToDisconnect' -benchtime 1x
	BENCH_HOST_STORM=20 BENCH_RESULTS_DIR=$(abspath $(BIN)) $(GO) test ./e2e -run '^$$' -bench HostStorm -benchtime 1x
	$(GO) build -o $(BIN)/tpmauthn-bench ./cmd/tpmauthn-bench
	BENCH_QUICK=1 $(BIN)/tpmauthn-bench $(BIN)

interop: build ## verify debug register/assert output with SimpleWebAuthn (node + npm)
	./scripts/interop.sh

browser-client: ## rebuild the vendored NATS browser client (verifier/passkey/assets/nats-core.js) with npm
	cd scripts/browser && npm ci --no-audit --no-fund --loglevel=error && npm run build

PREFIX ?= /usr/local
CONF  := $(DESTDIR)/etc/tpmauthn
install: build ## install the binaries, systemd units and example configs in /etc/tpmauthn (PREFIX=/usr/local; a config there is kept)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system $(CONF)
	install -m 0755 $(BIN)/tpmauthn-agent $(BIN)/tpmauthn-verifier $(BIN)/tpmauthnctl $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 systemd/*.service systemd/*.socket $(DESTDIR)/etc/systemd/system/
	install -m 0644 packaging/verifier.yaml $(CONF)/verifier.yaml.example
	install -m 0644 systemd/agent.yaml.example $(CONF)/agent.yaml.example
	@for f in verifier agent; do \
	  if [ -e $(CONF)/$$f.yaml ]; then echo "kept $(CONF)/$$f.yaml; this release's example is $(CONF)/$$f.yaml.example"; \
	  else install -m 0644 $(CONF)/$$f.yaml.example $(CONF)/$$f.yaml && echo "installed $(CONF)/$$f.yaml: edit it before you start tpmauthn-$$f"; fi; \
	done

clean: ## remove build output
	rm -rf $(BIN)
