#!/usr/bin/env bash
# Compose smoke test (`go tool task compose:smoke`, after images:local): brings deployments/docker-compose.yml
# up with deployments/docker-compose.local.yml (the local images; no Grafana) and compose.smoke.yml (health
# checks every 2-3 s) as project msgsvc-smoke on free host ports, waits for every health check, runs test/compose (create a tenant, publish, read it back, the
# count in /metrics, Prometheus's targets up) and tears the stack down with its volumes.
# SMOKE_TIMEOUT (seconds, default 300) bounds the wait for the health checks; on failure it prints the state
# and the last log lines of every container.
set -euo pipefail
cd "$(dirname "$0")/../.."

project=msgsvc-smoke
wait_s=${SMOKE_TIMEOUT:-300}
die() { echo "compose:smoke: $*" >&2; exit 1; }

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
command -v "${compose[0]}" >/dev/null || die "no docker compose (apt-get install docker-compose)"
timeout 20 docker info >/dev/null 2>&1 || die "no Docker daemon answers (deployments/images/dockerd.sh starts one)"
for img in msgsvc:local msgsvc-local/postgres:15 msgsvc-local/rabbitmq:4.0 msgsvc-local/prometheus:2; do
  docker image inspect "$img" >/dev/null 2>&1 || die "image $img is missing: run go tool task images:local"
done

# A free host port: nothing accepts a connection on it. Taken below the kernel's ephemeral range, where no
# outgoing connection or port-0 listener of the tests running meanwhile (test:local runs beside this) is given
# one between this check and Docker's bind.
ephemeral_low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$ephemeral_low" -gt 21000 ] 2>/dev/null || ephemeral_low=50000
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % (ephemeral_low - 20000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port found"
}
pick_ports() {
  MSGSVC_PORT=$(free_port) PROMETHEUS_PORT=$(free_port) POSTGRES_PORT=$(free_port) RABBITMQ_AMQP_PORT=$(free_port)
  RABBITMQ_UI_PORT=$(free_port) RABBITMQ_METRICS_PORT=$(free_port) GRAFANA_PORT=$(free_port)
  export MSGSVC_PORT PROMETHEUS_PORT POSTGRES_PORT RABBITMQ_AMQP_PORT RABBITMQ_UI_PORT RABBITMQ_METRICS_PORT GRAFANA_PORT
}
MSGSVC_ADMIN_API_KEY="smoke-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export MSGSVC_ADMIN_API_KEY

files=(-f deployments/docker-compose.yml -f deployments/docker-compose.local.yml -f deployments/images/compose.smoke.yml)
dc() { "${compose[@]}" -p $project "${files[@]}" "$@"; }

report() {
  echo "--- compose:smoke failed; containers:" >&2
  dc ps >&2 || true
  for c in $(dc ps -q 2>/dev/null); do
    echo "--- $(docker inspect -f '{{.Name}} {{.State.Status}} health={{if .State.Health}}{{.State.Health.Status}}{{end}}' "$c")" >&2
    docker logs --tail 25 "$c" 2>&1 | sed 's/^/    /' >&2
  done
}
cleanup() {
  status=$?
  [ $status -eq 0 ] || report
  timeout 120 "${compose[@]}" -p $project "${files[@]}" down -v --remove-orphans -t 20 >/dev/null 2>&1 || echo "compose:smoke: 'down' failed; remove project $project by hand" >&2
  exit $status
}
trap cleanup EXIT

start=$SECONDS
dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true # leftovers of an interrupted run
# `up -d` waits for the depends_on health conditions itself; the timeout stops it from hanging. A port taken
# by someone else between the check and the bind ("address already in use") gets other ports, twice at most.
for attempt in 1 2 3; do
  pick_ports
  echo "compose:smoke: up (service on 127.0.0.1:$MSGSVC_PORT, Prometheus on 127.0.0.1:$PROMETHEUS_PORT)"
  if out=$(timeout "$wait_s" "${compose[@]}" -p $project "${files[@]}" up -d --no-build 2>&1); then
    echo "$out"
    break
  fi
  echo "$out" >&2
  if [ $attempt -lt 3 ] && grep -q 'address already in use' <<<"$out"; then
    echo "compose:smoke: a host port was taken meanwhile; again on other ports" >&2
    dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    continue
  fi
  die "the stack did not come up healthy within ${wait_s}s"
done

# Every container healthy (Prometheus last: it waits for the service).
deadline=$((SECONDS + wait_s))
while :; do
  unhealthy=""
  for c in $(dc ps -q); do
    h=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$c")
    [ "$h" = healthy ] || unhealthy+=" $(docker inspect -f '{{.Name}}' "$c")=$h"
  done
  [ -n "$unhealthy" ] || break
  [ $SECONDS -lt $deadline ] || die "not healthy within ${wait_s}s:$unhealthy"
  sleep 2
done
echo "compose:smoke: all healthy after $((SECONDS - start))s; running test/compose"

TEST_COMPOSE_MSGSVC_URL=http://127.0.0.1:$MSGSVC_PORT TEST_COMPOSE_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT \
  TEST_COMPOSE_ADMIN_KEY=$MSGSVC_ADMIN_API_KEY TEST_REQUIRE_COMPOSE=1 \
  go test -count=1 -timeout 5m ./test/compose/ -v -run . 2>&1 | grep -v '^=== RUN' || die "test/compose failed"
echo "compose:smoke: passed in $((SECONDS - start))s"
