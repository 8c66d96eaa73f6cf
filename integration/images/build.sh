#!/usr/bin/env bash
# Builds the local stand-in images (make images): Debian bookworm packages
# and the cached Keycloak distribution, run with the same interface as the
# official images the containers launcher and compose.yaml default to.
# They are NOT the official images; they are tagged espmdm-local/... and
# exist for machines without a container registry.
#
# An image is rebuilt only when its inputs changed: each carries the hash
# of its inputs in the label org.espmdm.local.inputs.
#
#   integration/images/build.sh [base|postgres|mosquitto|keycloak|golang]...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
docker=${DOCKER:-docker}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
kc_version=${ESPMDM_KEYCLOAK_VERSION:-$(sed -n 's/^const DefaultKeycloakVersion = "\(.*\)"/\1/p' "$repo/integration/keycloakdist.go")}
cache_dir=${ESPMDM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/espmdm}
go_version=$(go env GOVERSION | sed 's/^go//')

BASE=espmdm-local/debian:$suite
POSTGRES=espmdm-local/postgres:15
MOSQUITTO=espmdm-local/mosquitto:2
KEYCLOAK=espmdm-local/keycloak:$kc_version
GOLANG=espmdm-local/golang:${go_version%.*}

log() { echo "images: $*" >&2; }

cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

# inputs_hash FILE... hashes the files' names and contents plus extra words
# given with -w.
inputs_hash() {
	{
		for f in "$@"; do
			if [ -f "$f" ]; then echo "$f"; sha256sum < "$f"; else echo "$f"; fi
		done
	} | sha256sum | cut -c1-16
}

current() { # current IMAGE HASH: the image exists with these inputs
	[ "$("$docker" image inspect --format '{{index .Config.Labels "org.espmdm.local.inputs"}}' "$1" 2>/dev/null || true)" = "$2" ]
}

build() { # build IMAGE HASH CONTEXT DOCKERFILE [ARGS...]
	local image=$1 hash=$2 ctx=$3 file=$4
	shift 4
	local began=$SECONDS
	log "building $image"
	"$docker" build --network host -q -f "$file" --label "org.espmdm.local.inputs=$hash" \
		--label "org.opencontainers.image.description=espmdm local stand-in built from Debian packages, not an official image" \
		--build-arg "BASE=$BASE" "$@" -t "$image" "$ctx" >/dev/null
	# The image this one replaces, if any.
	"$docker" image prune -f --filter label=org.espmdm.local.inputs >/dev/null
	log "built $image in $((SECONDS - began))s ($("$docker" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
}

base() {
	local hash
	hash=$(inputs_hash base-v1 "$suite" "$mirror")
	if current "$BASE" "$hash"; then log "$BASE is current"; return; fi
	command -v debootstrap >/dev/null || { echo "images: debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
	local began=$SECONDS tmp
	tmp=$(mktemp -d /tmp/espmdm-rootfs-XXXXXX)
	cleanup+=("$tmp")
	log "debootstrap $suite (minbase) from $mirror"
	debootstrap --variant=minbase "$suite" "$tmp/root" "$mirror" > "$tmp/debootstrap.log" 2>&1 ||
		{ tail -20 "$tmp/debootstrap.log" >&2; exit 1; }
	# Small and quiet like Debian's own container images: no caches, no
	# docs, no recommends, no interactive debconf.
	rm -rf "$tmp/root"/var/cache/apt/archives/*.deb "$tmp/root"/var/lib/apt/lists/* \
		"$tmp/root"/usr/share/doc/* "$tmp/root"/usr/share/man/* "$tmp/root"/usr/share/info/*
	cat > "$tmp/root/etc/apt/apt.conf.d/90espmdm-local" <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
CONF
	cat > "$tmp/root/etc/dpkg/dpkg.cfg.d/90espmdm-local" <<'CONF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CONF
	tar -C "$tmp/root" -c . | "$docker" import \
		--change 'ENV DEBIAN_FRONTEND=noninteractive' \
		--change 'CMD ["bash"]' \
		--change "LABEL org.espmdm.local.inputs=$hash" \
		- "$BASE" >/dev/null
	log "built $BASE in $((SECONDS - began))s"
}

postgres() {
	base
	local hash
	hash=$(inputs_hash "$here/postgres/Dockerfile" "$here/postgres/docker-entrypoint.sh" "$(inspect_id "$BASE")")
	if current "$POSTGRES" "$hash"; then log "$POSTGRES is current"; return; fi
	build "$POSTGRES" "$hash" "$here/postgres" "$here/postgres/Dockerfile"
}

mosquitto() {
	base
	local hash
	hash=$(inputs_hash "$here/mosquitto/Dockerfile" "$here/mosquitto/mosquitto.conf" "$(inspect_id "$BASE")")
	if current "$MOSQUITTO" "$hash"; then log "$MOSQUITTO is current"; return; fi
	build "$MOSQUITTO" "$hash" "$here/mosquitto" "$here/mosquitto/Dockerfile"
}

keycloak() {
	base
	local dist="$cache_dir/keycloak-$kc_version" hash
	if [ ! -f "$dist/bin/kc.sh" ]; then
		(cd "$repo" && go run ./integration/cmd/withstack -prepare)
	fi
	hash=$(inputs_hash "$here/keycloak/Dockerfile" "$dist/version.txt" "$kc_version" "$(inspect_id "$BASE")")
	if current "$KEYCLOAK" "$hash"; then log "$KEYCLOAK is current"; return; fi
	build "$KEYCLOAK" "$hash" "$dist" "$here/keycloak/Dockerfile"
}

golang() {
	base
	local goroot hash
	goroot=$(go env GOROOT)
	hash=$(inputs_hash "$here/golang/Dockerfile" "$goroot/VERSION" "$(go env GOVERSION)" "$(inspect_id "$BASE")" /etc/ssl/certs/ca-certificates.crt)
	if current "$GOLANG" "$hash"; then log "$GOLANG is current"; return; fi
	local tmp
	tmp=$(mktemp -d /tmp/espmdm-golang-XXXXXX)
	cleanup+=("$tmp")
	# The host's toolchain and CA bundle (so the module proxy this host
	# trusts is trusted inside the build too).
	cp -a "$goroot" "$tmp/go"
	rm -rf "$tmp/go/pkg/obj" "$tmp/go/test" "$tmp/go/doc" "$tmp/go/api"
	cp /etc/ssl/certs/ca-certificates.crt "$tmp/ca-certificates.crt"
	build "$GOLANG" "$hash" "$tmp" "$here/golang/Dockerfile"
}

inspect_id() { "$docker" image inspect --format '{{.Id}}' "$1"; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(postgres mosquitto keycloak golang)
began=$SECONDS
for t in "${targets[@]}"; do
	case $t in
	base | postgres | mosquitto | keycloak | golang) "$t" ;;
	*) echo "images: unknown image $t (want base, postgres, mosquitto, keycloak or golang)" >&2; exit 2 ;;
	esac
done
log "done in $((SECONDS - began))s"
