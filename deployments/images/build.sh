#!/usr/bin/env bash
# Builds the local image set from Debian packages, without any image registry (`go tool task images:local`):
#
#   msgsvc-local/debian:bookworm   debootstrap --variant=minbase of Debian 12 (+ ca-certificates), imported
#   msgsvc-local/debian:trixie     the same of Debian 13
#   msgsvc-local/postgres:15       postgres/Dockerfile: Debian 12's postgresql-15, entrypoint honouring
#                                  POSTGRES_USER/PASSWORD/DB, PGDATA like the official image
#   msgsvc-local/rabbitmq:4.0      rabbitmq/Dockerfile: Debian 13's rabbitmq-server 4.0, management and Prometheus
#                                  plugins, entrypoint honouring RABBITMQ_DEFAULT_USER/PASS/VHOST
#   msgsvc-local/prometheus:2      prometheus/Dockerfile: Debian 12's prometheus (+ wget for health checks)
#   msgsvc-local/golang:<go>       golang/Dockerfile: this machine's Go toolchain, the service's builder stage
#   msgsvc-local/static:nonroot    CA certificates, time zones, a nonroot (65532) user: the service's runtime stage
#   msgsvc:local                   the service: deployments/Dockerfile on the two images above
#
#   deployments/images/build.sh [postgres|rabbitmq|prometheus|golang|static|msgsvc ...]   (default: all)
#
# Cached: the two debootstraps (the slow part, in parallel) and the static image carry a label with a hash of
# their inputs and are reused while it matches; the others are docker builds (BuildKit's layer cache, in
# parallel), so a second run takes seconds. Works air-gapped with an internal Debian mirror (DEBIAN_MIRROR) and
# Go module proxy (GOPROXY). Settings: DEBIAN_MIRROR (default http://deb.debian.org/debian), IMAGES_WORKDIR
# (default /var/tmp/msgsvc-images: root file systems and build logs), IMAGES_TIMEOUT (seconds per step,
# default 900). Needs root (debootstrap) and a Docker engine (deployments/images/dockerd.sh starts one).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=deployments/images

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=${IMAGES_WORKDIR:-/var/tmp/msgsvc-images}
limit=${IMAGES_TIMEOUT:-900}
go_version=$(go env GOVERSION 2>/dev/null | sed 's/^go//') || true

PG_IMAGE=msgsvc-local/postgres:15
RABBITMQ_IMAGE=msgsvc-local/rabbitmq:4.0
PROMETHEUS_IMAGE=msgsvc-local/prometheus:2
GOLANG_IMAGE=msgsvc-local/golang:${go_version:-none}
STATIC_IMAGE=msgsvc-local/static:nonroot
SERVICE_IMAGE=msgsvc:local
LABEL=org.acme.msgsvc.inputs

die() { echo "images: $*" >&2; exit 1; }
log() { echo "images: $*"; }

[ "$(id -u)" -eq 0 ] || die "not root: debootstrap needs root (run as root, or sudo go tool task images:local)"
command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
timeout 20 docker info >/dev/null 2>&1 || die "no Docker daemon answers (deployments/images/dockerd.sh starts one)"

# BuildKit (for the Dockerfile's cache mounts): the docker client's buildx plugin, else Debian's docker.io
# client, which has BuildKit built in.
build_client() {
  if docker buildx version >/dev/null 2>&1; then echo docker; return; fi
  for c in /usr/bin/docker docker; do
    if DOCKER_BUILDKIT=1 "$c" build --help >/dev/null 2>&1 && "$c" version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^2[0-4]\.'; then
      echo "$c"; return
    fi
  done
  die "no docker client with BuildKit: install the buildx plugin or Debian's docker.io"
}

# The inputs of a debootstrap'd or imported image; bump the version to rebuild them all.
inputs_hash() { { echo "inputs v1"; cat "$@"; } 2>/dev/null | sha256sum | cut -c1-16; }

current() { # image hash: true when image exists with that inputs label
  [ "$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null)" = "$2" ]
}

# base SUITE: msgsvc-local/debian:SUITE, debootstrap --variant=minbase with ca-certificates, imported.
base() {
  local suite=$1 tag=msgsvc-local/debian:$1 hash root=$work/debian-$1 logf=$work/debian-$1.log start=$SECONDS
  hash=$(echo "debootstrap --variant=minbase --include=ca-certificates $suite $mirror" | inputs_hash -)
  if current "$tag" "$hash"; then log "$tag: up to date"; return; fi
  rm -rf "$root"
  log "$tag: debootstrap --variant=minbase $suite (log: $logf)"
  if ! timeout "$limit" debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$logf" 2>&1; then
    tail -n 15 "$logf" >&2
    die "$tag: debootstrap of $suite failed or took over ${limit}s (mirror $mirror; log $logf)"
  fi
  # What an image does not need: package caches, indexes, documentation.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/*
  tar -C "$root" -c . | docker import --change "LABEL $LABEL=$hash" --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null || die "$tag: docker import failed"
  rm -rf "$root"
  log "$tag: built in $((SECONDS - start))s"
}

# derived TAG BASE CONTEXT [DOCKERFILE]: docker build of deployments/images/<name>/Dockerfile on BASE
# (BuildKit's layer cache makes an unchanged rebuild take a second or two).
derived() {
  local tag=$1 from=$2 ctx=$3 file=${4:-$3/Dockerfile} name start=$SECONDS
  shift 4 || shift $#
  name=${tag#msgsvc-local/}; name=${name%%:*}
  DOCKER_BUILDKIT=1 timeout "$limit" "$client" build --progress=plain --build-arg BASE="$from" -f "$file" -t "$tag" \
    "$@" "$ctx" >"$work/$name.log" 2>&1 ||
    { tail -n 20 "$work/$name.log" >&2; die "$tag: docker build failed (log $work/$name.log)"; }
  log "$tag: built in $((SECONDS - start))s"
}

build_postgres() { derived $PG_IMAGE msgsvc-local/debian:bookworm $here/postgres; }
build_rabbitmq() { derived $RABBITMQ_IMAGE msgsvc-local/debian:trixie $here/rabbitmq; }
build_prometheus() { derived $PROMETHEUS_IMAGE msgsvc-local/debian:bookworm $here/prometheus; }
build_golang() {
  [ -n "$go_version" ] || die "no go in PATH: the builder image carries this machine's Go toolchain"
  # Its context is the whole Go root: skipped while the Go version, Dockerfile and CA certificates are the same.
  local ctx=$work/golang-context hash
  hash=$(echo "$go_version" | inputs_hash - $here/golang/Dockerfile /etc/ssl/certs/ca-certificates.crt)
  if current "$GOLANG_IMAGE" "$hash"; then log "$GOLANG_IMAGE: up to date"; return; fi
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp -al "$(go env GOROOT)" "$ctx/go" 2>/dev/null || cp -a "$(go env GOROOT)" "$ctx/go"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/" || die "/etc/ssl/certs/ca-certificates.crt is missing (apt-get install ca-certificates)"
  derived "$GOLANG_IMAGE" msgsvc-local/debian:bookworm "$ctx" $here/golang/Dockerfile --label "$LABEL=$hash"
  rm -rf "$ctx"
}

# The runtime stage like distroless/static:nonroot, from this machine's files: no shell, no package manager.
build_static() {
  local hash; hash=$(inputs_hash /etc/ssl/certs/ca-certificates.crt)
  if current $STATIC_IMAGE "$hash"; then log "$STATIC_IMAGE: up to date"; return; fi
  [ -s /etc/ssl/certs/ca-certificates.crt ] || die "/etc/ssl/certs/ca-certificates.crt is missing (apt-get install ca-certificates)"
  [ -d /usr/share/zoneinfo ] || die "/usr/share/zoneinfo is missing (apt-get install tzdata)"
  local root=$work/static
  rm -rf "$root" && mkdir -p "$root"/etc/ssl/certs "$root"/usr/share "$root"/tmp "$root"/home/nonroot
  chmod 1777 "$root"/tmp
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root"/etc/passwd
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root"/etc/group
  cp /etc/ssl/certs/ca-certificates.crt "$root"/etc/ssl/certs/
  cp -a /usr/share/zoneinfo "$root"/usr/share/
  chown 65532:65532 "$root"/home/nonroot
  tar -C "$root" -c . | docker import --change "LABEL $LABEL=$hash" --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' - $STATIC_IMAGE >/dev/null || die "$STATIC_IMAGE: docker import failed"
  rm -rf "$root"
  log "$STATIC_IMAGE: built"
}

build_msgsvc() {
  docker image inspect "$GOLANG_IMAGE" $STATIC_IMAGE >/dev/null 2>&1 ||
    die "$SERVICE_IMAGE needs $GOLANG_IMAGE and $STATIC_IMAGE (build.sh golang static)"
  local start=$SECONDS
  log "$SERVICE_IMAGE: docker build -f deployments/Dockerfile (builder $GOLANG_IMAGE, runtime $STATIC_IMAGE)"
  DOCKER_BUILDKIT=1 timeout "$limit" "$client" build --progress=plain -f deployments/Dockerfile -t $SERVICE_IMAGE \
    --build-arg BUILD_IMAGE="$GOLANG_IMAGE" --build-arg RUNTIME_IMAGE=$STATIC_IMAGE \
    --build-arg GOPROXY="$(go env GOPROXY)" . >"$work/msgsvc.log" 2>&1 ||
    { tail -n 30 "$work/msgsvc.log" >&2; die "$SERVICE_IMAGE: docker build failed (log $work/msgsvc.log)"; }
  log "$SERVICE_IMAGE: built in $((SECONDS - start))s"
}

mkdir -p "$work"
client=$(build_client)
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(postgres rabbitmq prometheus golang static msgsvc)
start=$SECONDS

# parallel NAME...: runs build_NAME for each in the background, fails naming those that failed.
parallel() {
  local pids=() names=() failed=() i
  for n in "$@"; do build_"$n" & pids+=($!) names+=("$n"); done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done
  [ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
}
build_bookworm() { base bookworm; }
build_trixie() { base trixie; }

# The two debootstraps in parallel; then, in parallel, the server images and the chain of the service's
# builder, runtime and service images (the Go build is the longest step).
suites=() servers=() chain=()
for w in "${want[@]}"; do
  case $w in
    rabbitmq) suites+=(trixie) servers+=("$w") ;;
    postgres | prometheus) suites+=(bookworm) servers+=("$w") ;;
    golang) suites+=(bookworm) chain+=("$w") ;;
    static | msgsvc) chain+=("$w") ;;
    *) die "unknown image $w (postgres, rabbitmq, prometheus, golang, static, msgsvc)" ;;
  esac
done
build_chain() { for c in golang static msgsvc; do [[ " ${chain[*]} " != *" $c "* ]] || build_"$c"; done; }
jobs=("${servers[@]}")
[ ${#chain[@]} -eq 0 ] || jobs+=(chain)
# shellcheck disable=SC2046 # one word per suite
[ ${#suites[@]} -eq 0 ] || parallel $(printf '%s\n' "${suites[@]}" | sort -u)
[ ${#jobs[@]} -eq 0 ] || parallel "${jobs[@]}"
log "done in $((SECONDS - start))s: $(docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^msgsvc' | tr '\n' ' ')"
