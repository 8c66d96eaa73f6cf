# espmdm's container image: a static binary on an empty base, running as a
# non-root user, no shell. Build it with
#
#   docker build -t espmdm .
#
# The console's web assets are embedded from adapters/console/dist as the
# build context has them: build them first (make console, which needs npm),
# or the image's console says it is not built. `make image` does both, and
# on a machine without a registry builds from a local Go builder image
# (GO_IMAGE=espmdm-local/golang:..., see README, Deploy).
ARG GO_IMAGE=golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
ARG GOPROXY
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# timetzdata: ROTATION_TZ needs the zone database, which scratch lacks.
# Without the dev tag: the server links no test harness (no `espmdm dev`).
RUN go build -tags timetzdata -ldflags "-s -w" -o /out/espmdm ./app/cmd/espmdm \
 && mkdir -p /out/data/firmware

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/espmdm /espmdm
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
ENV HTTP_ADDR=:8080 FIRMWARE_DIR=/data/firmware LOG_FORMAT=json
EXPOSE 8080
VOLUME /data
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD ["/espmdm", "healthcheck"]
ENTRYPOINT ["/espmdm"]
CMD ["serve"]
