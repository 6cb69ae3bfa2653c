#!/usr/bin/env bash
# Makes sure a Docker engine answers, for images:local, compose:smoke and test:containers.
#
#   deployments/images/dockerd.sh        # exit 0 when `docker info` answers (starting dockerd if needed)
#
# When no engine answers it installs what is missing from Debian (docker.io for dockerd, docker-compose,
# debootstrap), as root or with sudo, starts dockerd in the background (log in /var/log/msgsvc-dockerd.log) and
# waits at most DOCKERD_WAIT seconds (default 60). Every failure names the missing piece.
set -euo pipefail

wait_s=${DOCKERD_WAIT:-60}
die() { echo "dockerd.sh: $*" >&2; exit 1; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
fi
as_root() {
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then $sudo "$@"; else
    die "not root and no password-less sudo: cannot run '$*' (install docker.io, docker-compose and debootstrap, and start dockerd, as root)"
  fi
}

# Debian packages for every piece the container tasks use; the Docker client may come from elsewhere.
need=()
command -v dockerd >/dev/null || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then need+=(docker-compose); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "dockerd.sh: installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null ||
    { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q -o DPkg::Lock::Timeout=300 "${need[@]}" >/dev/null; } ||
    die "apt-get install ${need[*]} failed"
fi
command -v docker >/dev/null || die "no docker client in PATH (Debian's docker.io brings one)"

if timeout 20 docker info >/dev/null 2>&1; then exit 0; fi

if [ -S /var/run/docker.sock ] && pgrep -x dockerd >/dev/null; then
  die "dockerd runs but 'docker info' fails (permission on /var/run/docker.sock? run as root or join the docker group)"
fi
dockerd_bin=$(command -v dockerd || echo /usr/sbin/dockerd)
log=/var/log/msgsvc-dockerd.log
[ -w /var/log ] || log=${TMPDIR:-/tmp}/msgsvc-dockerd.log
echo "dockerd.sh: starting $dockerd_bin (log: $log)"
# setsid: the daemon outlives this script and the task that ran it.
as_root setsid nohup "$dockerd_bin" >"$log" 2>&1 </dev/null &
for _ in $(seq "$wait_s"); do
  if timeout 10 docker info >/dev/null 2>&1; then echo "dockerd.sh: Docker engine up"; exit 0; fi
  sleep 1
done
echo "--- last lines of $log:" >&2; tail -n 20 "$log" >&2 || true
die "no Docker daemon answered within ${wait_s}s after starting dockerd"
