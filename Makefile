# espmdm — `make run` starts everything locally, `make test` proves it.
GO       ?= go
LAUNCHER ?= $(or $(ESPMDM_LAUNCHER),auto)
BIN      := bin/espmdm
# The dev stack's binary: the server plus `espmdm dev`, which links the
# integration harness (testcontainers-go, the Docker client); the server
# binary, BIN, does not.
DEV_BIN  := bin/espmdm-dev
GOLANGCI_LINT_VERSION := v2.15.0
# Packages run one at a time: they share one stack, and some tests stop and
# restart its services.
# The dev tag builds `espmdm dev` and its tests (TestDev, TestDevDataDir).
TEST_FLAGS ?= -count=1 -p 1 -timeout 30m -tags dev

CONSOLE_WEB := adapters/console/web

.PHONY: all build build-dev console console-api console-test firmware firmware-test test test-containers images image bench bench-identities lint run deps fuzz clean

all: build

## build: the console's web assets (embedded), then bin/espmdm (the server; no dev stack)
build: console
	$(GO) build -o $(BIN) ./app/cmd/espmdm

## build-dev: bin/espmdm-dev, the same commands plus `espmdm dev` (the dev tag)
build-dev: console
	$(GO) build -tags dev -o $(DEV_BIN) ./app/cmd/espmdm

## console: npm ci (when the lockfile changed) and the Vite build into adapters/console/dist (when a source changed)
CONSOLE_SRC := $(shell find $(CONSOLE_WEB)/src $(CONSOLE_WEB)/public -type f 2>/dev/null) \
	$(wildcard $(CONSOLE_WEB)/*.html $(CONSOLE_WEB)/*.json $(CONSOLE_WEB)/vite.config.ts)
console: adapters/console/dist/index.html

adapters/console/dist/index.html: $(CONSOLE_WEB)/node_modules/.package-lock.json $(CONSOLE_SRC)
	cd $(CONSOLE_WEB) && npm run --silent build

$(CONSOLE_WEB)/node_modules/.package-lock.json: $(CONSOLE_WEB)/package-lock.json $(CONSOLE_WEB)/package.json
	cd $(CONSOLE_WEB) && npm ci --no-audit --no-fund

## console-api: refresh the console's copy of the OpenAPI document and its generated types
console-api: $(CONSOLE_WEB)/node_modules/.package-lock.json
	UPDATE_CONSOLE_API=1 $(GO) test -count=1 ./adapters/httpapi -run '^TestConsoleOpenAPISnapshot$$'
	cd $(CONSOLE_WEB) && npm run --silent gen:api

## console-test: the console's unit tests (Vitest)
console-test: $(CONSOLE_WEB)/node_modules/.package-lock.json
	cd $(CONSOLE_WEB) && npm test --silent

## firmware: bin/espmdm-device, the device component (firmware/espmdm) in a linux host build,
## with the offline ESP-IDF SDK that make deps sets up in ESPMDM_IDF_SDK (default ~/.cache/espmdm/idf);
## rebuilt only when firmware/ changed
FIRMWARE_SRC := $(shell find firmware -type f 2>/dev/null)
firmware: bin/espmdm-device

bin/espmdm-device: $(FIRMWARE_SRC)
	bash firmware/build.sh device $@

## firmware-test: the component's unit tests (its state machines against fakes), on the host
firmware-test: bin/espmdm-unit-tests
	bin/espmdm-unit-tests

bin/espmdm-unit-tests: $(FIRMWARE_SRC)
	bash firmware/build.sh test $@

## deps: install what the processes launcher needs (idempotent, fast when present)
deps:
	bash .ci/deps

## test: every unit, adapter and end-to-end test, against one real stack (with its S3 server)
test: deps console console-test firmware firmware-test
	$(GO) build ./...
	$(GO) vet -tags dev ./...
	$(GO) run ./integration/cmd/withstack -launcher $(LAUNCHER) -s3 -- $(GO) test $(TEST_FLAGS) ./...

## images: local stand-ins of the official postgres, Keycloak, Mosquitto and
## golang images from Debian packages (cached: rebuilt only when their inputs change)
images:
	bash integration/images/build.sh

## image: espmdm's container image (Dockerfile) as IMAGE (default espmdm:latest)
image:
	bash .ci/build-image $(or $(IMAGE),espmdm:latest)

## test-containers: smoke and end-to-end tests on a containers stack, and compose.yaml, on a Docker engine
test-containers:
	bash .ci/test-containers

## bench-identities: espmdm at 1,000 … 100,000 real Keycloak clients (Keycloak on PostgreSQL), within IDENTITIES_BUDGET
## (default 60m): BENCH identities lines, the table and chart in docs/benchmarks.md; not in CI
IDENTITIES_SIZES  ?= 1000,10000,20000,50000,100000
IDENTITIES_BUDGET ?= 60m
bench-identities: deps
	$(GO) run ./integration/cmd/bench-identities -sizes $(IDENTITIES_SIZES) -budget $(IDENTITIES_BUDGET) -out docs/benchmarks.md

## bench: the product benchmarks (BENCH lines, docs/benchmarks.md), then the Go benchmarks, on one stack
bench: deps
	$(GO) run ./integration/cmd/withstack -launcher $(LAUNCHER) -s3 -- sh -c '$(GO) run ./integration/cmd/bench -out docs/benchmarks.md && $(GO) test -count=1 -p 1 -run "^$$" -bench . -benchmem ./...'

## fuzz: each fuzz target for FUZZTIME (default 1m)
FUZZTIME ?= 1m
fuzz:
	$(GO) test ./nvs -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./nvs -run '^$$' -fuzz '^FuzzReadCSV$$' -fuzztime $(FUZZTIME)
	$(GO) test ./esp32image -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./core/model -run '^$$' -fuzz '^FuzzReadCoredumpInfo$$' -fuzztime $(FUZZTIME)
	$(GO) test ./adapters/coredump -run '^$$' -fuzz '^FuzzParseReport$$' -fuzztime $(FUZZTIME)

lint:
	@command -v golangci-lint >/dev/null 2>&1 || $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	golangci-lint run ./...

## run: the whole stack plus the server (espmdm dev, from bin/espmdm-dev); Ctrl-C stops everything
run: deps build build-dev
	$(DEV_BIN) dev --launcher $(LAUNCHER) --env-file $(or $(ENV_FILE),.espmdm-dev.env) $(if $(DATA_DIR),--data-dir $(DATA_DIR)) $(if $(BLOB_STORE),--blob-store $(BLOB_STORE))

clean:
	rm -rf bin $(CONSOLE_WEB)/node_modules
	find adapters/console/dist -mindepth 1 ! -name PLACEHOLDER -delete
