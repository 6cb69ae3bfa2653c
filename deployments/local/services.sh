#!/usr/bin/env bash
# Local throwaway PostgreSQL + RabbitMQ for development and integration tests,
# without Docker. See README.md next to this file.
#
#   services.sh up | down [--purge] | status | env
#   services.sh pg-stop | pg-start
#   services.sh rabbitmq-stop-app | rabbitmq-start-app | rabbitmqctl <args...>
#   services.sh cluster-up | cluster-down [--purge] | cluster-status | cluster-env
#   services.sh node-stop N | node-start N | node-kill N | node-ctl N <args...>
set -euo pipefail

# ---------------------------------------------------------------- locations --
SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SCRIPT")/../.." && pwd -P)"
DEV="$ROOT/.dev"
ENV_FILE="$DEV/services.env"
PORTS_FILE="$DEV/ports.env" # effective ports of the last `up` (see load_settings)
HASH="$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)"

RMQ="$DEV/rabbitmq"
RMQ_BIN="${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}"
RMQ_NODE="msgsvc-$HASH@localhost"
RMQ_PID_FILE="$RMQ/rabbit.pid"      # beam pid, written by RabbitMQ itself
RMQ_WRAPPER_PID="$RMQ/wrapper.pid"  # pid of the rabbitmq-server shell wrapper

# PostgreSQL refuses to run as root. As root we run it as `postgres`, which
# may not be able to traverse the checkout (e.g. a `mktemp -d` clone, mode
# 700), so its directory lives under /var/tmp and .dev/postgres is a symlink.
if ((EUID == 0)); then
	PG_DIR="/var/tmp/msgsvc-$HASH/postgres"
else
	PG_DIR="$DEV/postgres"
fi
PG_LINK="$DEV/postgres"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
PG_SOCK="$PG_DIR/run"

TIMEOUT="${SERVICES_TIMEOUT:-90}"

# ------------------------------------------------------------------ helpers --
log() { printf 'services: %s\n' "$*" >&2; }
die() {
	printf 'services: ERROR: %s\n' "$*" >&2
	exit 1
}
now() { date +%s; }

# tail_log FILE...: show the end of server logs after a failure.
tail_log() {
	local f
	for f in "$@"; do
		[[ -s $f ]] || continue
		printf -- '----- last lines of %s -----\n' "$f" >&2
		tail -n 40 "$f" >&2 || true
	done
}

# Ports: explicit env var > value recorded by the last `up` > default.
# Recording them means `status`, `rabbitmqctl`, `rabbitmq-stop-app` etc. find a
# node that was started with non-default ports even without the env vars.
load_settings() {
	local k v
	declare -A rec=()
	if [[ -f $PORTS_FILE ]]; then
		while IFS='=' read -r k v; do
			[[ $k =~ ^[A-Z_]+$ ]] && rec[$k]=$v
		done <"$PORTS_FILE"
	fi
	PG_PORT="${PG_PORT:-${rec[PG_PORT]:-27432}}"
	AMQP_PORT="${AMQP_PORT:-${rec[AMQP_PORT]:-27672}}"
	RABBITMQ_MGMT_PORT="${RABBITMQ_MGMT_PORT:-${rec[RABBITMQ_MGMT_PORT]:-27673}}"
	RABBITMQ_PROM_PORT="${RABBITMQ_PROM_PORT:-${rec[RABBITMQ_PROM_PORT]:-27676}}"
	RABBITMQ_DIST_PORT="${RABBITMQ_DIST_PORT:-${rec[RABBITMQ_DIST_PORT]:-27674}}"
	ERL_EPMD_PORT="${ERL_EPMD_PORT:-${rec[ERL_EPMD_PORT]:-27675}}"
	RABBITMQ_CLUSTER_PORT="${RABBITMQ_CLUSTER_PORT:-${rec[RABBITMQ_CLUSTER_PORT]:-61700}}"
	for k in PG_PORT AMQP_PORT RABBITMQ_MGMT_PORT RABBITMQ_PROM_PORT RABBITMQ_DIST_PORT ERL_EPMD_PORT RABBITMQ_CLUSTER_PORT; do
		[[ ${!k} =~ ^[0-9]+$ ]] && ((${!k} > 0 && ${!k} < 65536)) || die "$k=${!k} is not a valid port"
	done
	RMQ_MGMT_SAMPLE_INTERVAL="${RMQ_MGMT_SAMPLE_INTERVAL:-5}"
	[[ $RMQ_MGMT_SAMPLE_INTERVAL =~ ^[0-9]{1,2}$ ]] && ((10#$RMQ_MGMT_SAMPLE_INTERVAL >= 1 && 10#$RMQ_MGMT_SAMPLE_INTERVAL <= 60)) ||
		die "RMQ_MGMT_SAMPLE_INTERVAL=$RMQ_MGMT_SAMPLE_INTERVAL is not a number of seconds from 1 to 60"
	RMQ_MGMT_SAMPLE_INTERVAL=$((10#$RMQ_MGMT_SAMPLE_INTERVAL))
	((RABBITMQ_CLUSTER_PORT + 30 < 65536)) || die "RABBITMQ_CLUSTER_PORT=$RABBITMQ_CLUSTER_PORT: the cluster needs it and the 30 ports above it"
}

save_settings() {
	cat >"$PORTS_FILE.tmp" <<EOF
PG_PORT=$PG_PORT
AMQP_PORT=$AMQP_PORT
RABBITMQ_MGMT_PORT=$RABBITMQ_MGMT_PORT
RABBITMQ_PROM_PORT=$RABBITMQ_PROM_PORT
RABBITMQ_DIST_PORT=$RABBITMQ_DIST_PORT
ERL_EPMD_PORT=$ERL_EPMD_PORT
RABBITMQ_CLUSTER_PORT=$RABBITMQ_CLUSTER_PORT
EOF
	mv -f "$PORTS_FILE.tmp" "$PORTS_FILE"
}

ensure_dev_dir() {
	mkdir -p "$DEV"
	[[ -f $DEV/.gitignore ]] || printf '*\n' >"$DEV/.gitignore"
}

# Serialise state-changing subcommands (parallel test packages may call `up`).
# fd 9 holds the lock; every daemon is started with 9>&- so it does not keep it.
take_lock() {
	ensure_dev_dir
	exec 9>"$DEV/services.lock"
	if ! flock -w "$TIMEOUT" 9; then
		die "another services.sh holds $DEV/services.lock for more than ${TIMEOUT}s"
	fi
}

# port_free VAR: fail early, and clearly, if something already listens there.
port_free() {
	local var="$1"
	if timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "${!var}" 2>/dev/null; then
		die "port 127.0.0.1:${!var} ($var) is already in use by another process (another checkout? choose another port: $var=... $SCRIPT up)"
	fi
}

# ----------------------------------------------------------------- packages --
pg_bin_dir() {
	local d
	d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
	[[ -n $d && -x $d/initdb ]] || return 1
	printf '%s\n' "$d"
}

ensure_packages() {
	local pkgs=() sudo=()
	pg_bin_dir >/dev/null || pkgs+=(postgresql)
	[[ -x $RMQ_BIN/rabbitmq-server ]] || pkgs+=(rabbitmq-server)
	((${#pkgs[@]})) || return 0
	if ((EUID != 0)); then
		command -v sudo >/dev/null || die "need root or sudo to install: ${pkgs[*]}"
		sudo=(sudo)
	fi
	local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get
		-o DPkg::Lock::Timeout=300 -y -q --no-install-recommends)
	local alog="$DEV/apt.log" t0
	t0=$(now)
	log "installing ${pkgs[*]} with apt-get (log: $alog)"
	if ! "${apt[@]}" install "${pkgs[@]}" >"$alog" 2>&1; then
		log "apt-get install failed, running apt-get update and retrying"
		if ! { "${apt[@]}" update && "${apt[@]}" install "${pkgs[@]}"; } >>"$alog" 2>&1; then
			tail_log "$alog"
			die "apt-get install ${pkgs[*]} failed"
		fi
	fi
	log "installed ${pkgs[*]} in $(($(now) - t0))s"
	pg_bin_dir >/dev/null || die "PostgreSQL binaries still missing after install"
	[[ -x $RMQ_BIN/rabbitmq-server ]] || die "$RMQ_BIN/rabbitmq-server still missing after install"
}

# --------------------------------------------------------------- PostgreSQL --
PG_BIN=""
need_pg_bin() {
	[[ -n $PG_BIN ]] && return 0
	PG_BIN="$(pg_bin_dir)" || die "PostgreSQL not installed (no /usr/lib/postgresql/*/bin/initdb); run: $SCRIPT up"
}

# as_pg CMD...: run a PostgreSQL server tool as the postgres user when root.
# Runs from / because postgres may not be allowed into the current directory.
as_pg() {
	if ((EUID == 0)); then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

pg_prepare_dirs() {
	ensure_dev_dir
	if ((EUID == 0)); then
		id postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (is the postgresql package installed?)"
		local base="${PG_DIR%/postgres}"
		if [[ -L $base || -L $PG_DIR ]]; then die "$base or $PG_DIR is a symlink; refusing to use it"; fi
		install -d -m 700 -o root -g root "$base"
		install -d -m 700 -o postgres -g postgres "$PG_DIR" "$PG_SOCK"
		# The base dir is root's; postgres only needs to traverse it.
		chmod 711 "$base"
		printf '%s\n' "$ROOT" >"$base/checkout" # which checkout this belongs to
		if [[ ! -L $PG_LINK || $(readlink "$PG_LINK") != "$PG_DIR" ]]; then
			rm -rf "$PG_LINK"
			ln -s "$PG_DIR" "$PG_LINK"
		fi
	else
		mkdir -p "$PG_DIR" "$PG_SOCK"
		chmod 700 "$PG_DIR" "$PG_SOCK"
	fi
}

# Socket paths are limited to ~107 bytes; fall back to a short dir if needed.
pg_sock_dir() {
	if ((${#PG_SOCK} + 20 < 100)); then
		printf '%s\n' "$PG_SOCK"
	else
		local s="${TMPDIR:-/tmp}/msgsvc-$HASH-pgsock"
		mkdir -p "$s"
		chmod 700 "$s"
		printf '%s\n' "$s"
	fi
}

pg_write_conf() {
	local sock
	sock="$(pg_sock_dir)"
	cat >"$PG_DATA/msgsvc.conf.tmp" <<EOF
# Written by deployments/local/services.sh on every start; edits are lost.
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
EOF
	if ((EUID == 0)); then chown postgres:postgres "$PG_DATA/msgsvc.conf.tmp"; fi
	mv -f "$PG_DATA/msgsvc.conf.tmp" "$PG_DATA/msgsvc.conf"
	grep -q "^include_if_exists = 'msgsvc.conf'" "$PG_DATA/postgresql.conf" ||
		as_pg sh -c "printf '\n%s\n' \"include_if_exists = 'msgsvc.conf'\" >>'$PG_DATA/postgresql.conf'"
}

pg_initdb() {
	[[ -f $PG_DATA/PG_VERSION ]] && return 0
	log "initialising PostgreSQL data dir $PG_DATA"
	rm -rf "$PG_DATA"
	if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust \
		--encoding=UTF8 --no-locale --no-sync >"$PG_DIR/initdb.log" 2>&1; then
		tail_log "$PG_DIR/initdb.log"
		rm -rf "$PG_DATA"
		die "initdb failed"
	fi
}

pg_running() {
	[[ -n $PG_BIN && -f $PG_DATA/PG_VERSION ]] || return 1
	as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

pg_running_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

pg_ready() {
	"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1 || return 1
	PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
		-c 'select 1' >/dev/null 2>&1
}

pg_wait_ready() {
	local deadline=$(($(now) + TIMEOUT))
	until pg_ready; do
		if ! pg_running; then
			tail_log "$PG_LOG"
			die "PostgreSQL is not running (see $PG_LOG)"
		fi
		if (($(now) >= deadline)); then
			tail_log "$PG_LOG"
			die "PostgreSQL did not accept connections on 127.0.0.1:$PG_PORT within ${TIMEOUT}s (server left running; '$SCRIPT down' stops it)"
		fi
		sleep 0.2
	done
}

pg_psql() {
	PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" "$@"
}

pg_ensure_role_db() {
	if [[ $(pg_psql -U postgres -d postgres -c "select 1 from pg_roles where rolname='msgsvc'") != 1 ]]; then
		log "creating PostgreSQL role msgsvc"
		pg_psql -U postgres -d postgres -c "create role msgsvc login superuser password 'msgsvc'" >/dev/null
	fi
	if [[ $(pg_psql -U postgres -d postgres -c "select 1 from pg_database where datname='msgsvc'") != 1 ]]; then
		log "creating PostgreSQL database msgsvc"
		pg_psql -U postgres -d postgres -c "create database msgsvc owner msgsvc" >/dev/null
	fi
	# The real check: the exact credentials the application uses.
	pg_psql -d "postgres://msgsvc:msgsvc@127.0.0.1:$PG_PORT/msgsvc?sslmode=disable" -c 'select 1' >/dev/null ||
		die "cannot connect to PostgreSQL as msgsvc on 127.0.0.1:$PG_PORT"
}

pg_stop() {
	PG_BIN="$(pg_bin_dir)" || return 0
	pg_running || return 0
	log "stopping PostgreSQL"
	as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$TIMEOUT" >/dev/null ||
		die "pg_ctl stop failed"
}

pg_start() {
	need_pg_bin
	pg_prepare_dirs
	pg_initdb
	pg_write_conf
	if pg_running; then
		local p
		p="$(pg_running_port)"
		if [[ -n $p && $p != "$PG_PORT" ]]; then
			log "PostgreSQL runs on port $p, want $PG_PORT: restarting"
			pg_stop
		fi
	fi
	if ! pg_running; then
		port_free PG_PORT
		log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
		# pg_ctl detaches postgres (own session, stdio to the log file).
		if ! (as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" 9>&- >"$PG_DIR/pg_ctl.log" 2>&1 </dev/null); then
			tail_log "$PG_DIR/pg_ctl.log" "$PG_LOG"
			die "PostgreSQL failed to start (log: $PG_LOG)"
		fi
	fi
	pg_wait_ready
	pg_ensure_role_db
}

# ----------------------------------------------------------------- RabbitMQ --
# Environment for every RabbitMQ script we run (server and CLI alike).
rmq_env() {
	RMQ_ENV=(env -u RABBITMQ_MNESIA_DIR -u RABBITMQ_CONFIG_FILES -u RABBITMQ_ENABLED_PLUGINS
		HOME="$RMQ/home"
		RABBITMQ_NODENAME="$RMQ_NODE"
		RABBITMQ_USE_LONGNAME=false
		RABBITMQ_CONF_ENV_FILE="$RMQ/rabbitmq-env.conf"
		RABBITMQ_CONFIG_FILE="$RMQ/rabbitmq.conf"
		RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ/advanced.config"
		RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ/enabled_plugins"
		RABBITMQ_MNESIA_BASE="$RMQ/mnesia"
		RABBITMQ_PLUGINS_EXPAND_DIR="$RMQ/mnesia/plugins-expand"
		RABBITMQ_LOG_BASE="$RMQ/log"
		RABBITMQ_LOGS="$RMQ/log/rabbit.log"
		RABBITMQ_PID_FILE="$RMQ_PID_FILE"
		RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		RABBITMQ_NODE_PORT="$AMQP_PORT"
		RABBITMQ_DIST_PORT="$RABBITMQ_DIST_PORT"
		ERL_EPMD_PORT="$ERL_EPMD_PORT"
		ERL_EPMD_ADDRESS=127.0.0.1
		ERL_CRASH_DUMP="$RMQ/log/erl_crash.dump")
}

# rmq TOOL ARGS...: run a RabbitMQ script with our node's environment.
# rmqp N PREFIX(N words) TOOL ARGS...: same, behind a prefix command such as
# `setsid` or `timeout 10`.
rmq() { rmqp 0 "$@"; }
rmqp() {
	local n="$1"
	shift
	local prefix=("${@:1:n}")
	shift "$n"
	local tool="$1"
	shift
	[[ -x $RMQ_BIN/$tool ]] || die "$RMQ_BIN/$tool not found (RabbitMQ not installed?); run: $SCRIPT up"
	rmq_env
	"${prefix[@]}" "${RMQ_ENV[@]}" "$RMQ_BIN/$tool" "$@"
}

rmq_prepare() {
	ensure_dev_dir
	mkdir -p "$RMQ/home" "$RMQ/mnesia" "$RMQ/log"
	chmod 700 "$RMQ/home"
	if [[ ! -s $RMQ/home/.erlang.cookie ]]; then
		(umask 077 && head -c 30 /dev/urandom | sha256sum | cut -c1-40 | tr 'a-f' 'A-F' >"$RMQ/home/.erlang.cookie")
	fi
	chmod 400 "$RMQ/home/.erlang.cookie"
	: >"$RMQ/rabbitmq-env.conf" # keeps /etc/rabbitmq/rabbitmq-env.conf out
	printf '[rabbitmq_management,rabbitmq_prometheus].\n' >"$RMQ/enabled_plugins"
	cat >"$RMQ/rabbitmq.conf" <<EOF
# Written by deployments/local/services.sh on every start; edits are lost.
# AMQP listener: RABBITMQ_NODE_IP_ADDRESS=127.0.0.1, RABBITMQ_NODE_PORT=$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBITMQ_MGMT_PORT
# Prometheus endpoint: /metrics (aggregated), /metrics/per-object, /metrics/detailed?family=...
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $RABBITMQ_PROM_PORT
distribution.listener.interface = 127.0.0.1
# guest may log in from loopback only (RabbitMQ's default).
loopback_users.guest = true
# Throwaway node: do not block publishers on a machine with little free disk/RAM.
disk_free_limit.absolute = 50MB
vm_memory_high_watermark.relative = 0.8
log.console = false
log.file.level = info
# Management statistics are sampled every RMQ_MGMT_SAMPLE_INTERVAL seconds (RabbitMQ's default: 5). Each sample
# walks every queue's and channel's figures: at 10,000 idle tenants 30 s halved the node's idle CPU (the bench's
# node and deployments/rabbitmq/msgsvc.conf use 30).
management.sample_retention_policies.global.minute = $RMQ_MGMT_SAMPLE_INTERVAL
management.sample_retention_policies.global.hour = 60
management.sample_retention_policies.global.day = 1200
management.sample_retention_policies.basic.minute = $RMQ_MGMT_SAMPLE_INTERVAL
management.sample_retention_policies.basic.hour = 60
management.sample_retention_policies.detailed.$((2 * RMQ_MGMT_SAMPLE_INTERVAL)) = $RMQ_MGMT_SAMPLE_INTERVAL
EOF
	# Cluster nodes add their peer discovery settings (see cluster_node_start).
	[[ -z ${RMQ_EXTRA_CONF:-} ]] || printf '%s\n' "$RMQ_EXTRA_CONF" >>"$RMQ/rabbitmq.conf"
}

# Fingerprint of what a running node was started with; a change means restart.
rmq_fingerprint() {
	{
		cat "$RMQ/rabbitmq.conf" "$RMQ/enabled_plugins"
		echo "$AMQP_PORT $RABBITMQ_DIST_PORT $ERL_EPMD_PORT $RMQ_NODE"
	} | sha256sum | cut -c1-16
}

# Pid of our node if it is alive: the beam process (RABBITMQ_PID_FILE) or, until
# that file exists, the rabbitmq-server wrapper. Both inherit our environment,
# which identifies them (pids may be reused by unrelated processes).
rmq_node_pid() {
	local pid f
	for f in "$RMQ_PID_FILE" "$RMQ_WRAPPER_PID"; do
		pid="$(cat "$f" 2>/dev/null || true)"
		[[ $pid =~ ^[0-9]+$ && -r /proc/$pid/environ ]] || continue
		if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF -- "RABBITMQ_NODENAME=$RMQ_NODE"; then
			printf '%s\n' "$pid"
			return 0
		fi
	done
	return 1
}

# AMQP handshake: send the 0-9-1 protocol header, expect a method frame
# (Connection.Start) on channel 0. Proves the broker really serves AMQP.
amqp_ping() {
	local out
	out="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf "AMQP\x00\x00\x09\x01" >&3
		head -c 3 <&3' _ "$AMQP_PORT" 2>/dev/null | od -An -tx1 | tr -d ' \n')" || return 1
	[[ $out == 010000 ]]
}

mgmt_ping() {
	curl -fsS -m 5 -o /dev/null -u guest:guest "http://127.0.0.1:$RABBITMQ_MGMT_PORT/api/overview" 2>/dev/null
}

prom_ping() {
	curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$RABBITMQ_PROM_PORT/metrics" 2>/dev/null
}

rmq_ready() { amqp_ping && mgmt_ping && prom_ping; }

# A memory or disk alarm blocks every publisher; say so instead of letting
# tests hang.
rmq_warn_alarms() {
	local body
	body="$(curl -sS -m 5 -u guest:guest "http://127.0.0.1:$RABBITMQ_MGMT_PORT/api/health/checks/alarms" 2>&1 || true)"
	if [[ $body != *'"status":"ok"'* ]]; then
		log "WARNING: RabbitMQ reports a resource alarm, publishers will block: $body"
	fi
}

rmq_logs() { tail_log "$RMQ/log/startup.log" "$RMQ/log/rabbit.log"; }

# rmq_wait_ready WHAT: wait for AMQP, management API and Prometheus endpoint while the node lives.
rmq_wait_ready() {
	local what="$1" deadline=$(($(now) + TIMEOUT))
	local gone=0
	until rmq_ready; do
		# The node's pid is looked up through /proc/PID/environ, which reads as empty for a moment while the
		# wrapper execs rabbitmq-server and its scripts exec the VM: the node counts as gone only when it is
		# missing three times in a row.
		if rmq_node_pid >/dev/null; then
			gone=0
		elif ((++gone >= 3)); then
			rmq_logs
			die "RabbitMQ node $RMQ_NODE exited during $what (logs: $RMQ/log)"
		fi
		if (($(now) >= deadline)); then
			rmq_logs
			die "RabbitMQ did not answer on AMQP 127.0.0.1:$AMQP_PORT, management 127.0.0.1:$RABBITMQ_MGMT_PORT and Prometheus 127.0.0.1:$RABBITMQ_PROM_PORT within ${TIMEOUT}s of $what (node left running for inspection; '$SCRIPT down' stops it)"
		fi
		sleep 0.3
	done
}

rmq_ctl_quiet() {
	local out
	if ! out="$(rmq rabbitmqctl "$@" 2>&1)"; then
		printf '%s\n' "$out" >&2
		return 1
	fi
}

rmq_start() {
	[[ -x $RMQ_BIN/rabbitmq-server ]] || die "RabbitMQ not installed; run: $SCRIPT up"
	rmq_prepare
	local fp pid
	fp="$(rmq_fingerprint)"
	if pid="$(rmq_node_pid)"; then
		if [[ $(cat "$RMQ/running.fingerprint" 2>/dev/null || true) != "$fp" ]]; then
			log "RabbitMQ configuration changed: restarting node $RMQ_NODE"
			rmq_stop
		elif rmq_ready; then
			return 0
		else
			# Still booting, or its app was stopped (rabbitmq-stop-app).
			local state
			state="$(rmq rabbitmqctl -q eval '{rabbit:is_booting(), rabbit:is_running()}.' 2>/dev/null || true)"
			if [[ $state == "{false,false}" ]]; then
				log "RabbitMQ node $RMQ_NODE is up but its app is stopped: starting it"
				rmq_ctl_quiet start_app || die "rabbitmqctl start_app failed"
			fi
			rmq_wait_ready "startup"
			return 0
		fi
	fi

	port_free AMQP_PORT
	port_free RABBITMQ_MGMT_PORT
	port_free RABBITMQ_PROM_PORT
	port_free RABBITMQ_DIST_PORT
	log "starting RabbitMQ node $RMQ_NODE (AMQP 127.0.0.1:$AMQP_PORT, management 127.0.0.1:$RABBITMQ_MGMT_PORT, Prometheus 127.0.0.1:$RABBITMQ_PROM_PORT)"
	rm -f "$RMQ_PID_FILE"
	printf '%s\n' "$fp" >"$RMQ/running.fingerprint"
	# Own session (setsid -f), stdio detached: the node survives the calling
	# shell and its process group. The wrapper writes its own pid, then execs
	# rabbitmq-server (which traps TERM and stops the node cleanly).
	rm -f "$RMQ_WRAPPER_PID"
	(
		cd "$RMQ"
		# shellcheck disable=SC2016
		rmqp 6 setsid -f bash -c 'echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' "$RMQ_WRAPPER_PID" \
			rabbitmq-server </dev/null >>"$RMQ/log/startup.log" 2>&1 9>&-
	)
	local deadline=$(($(now) + 10))
	until [[ -s $RMQ_WRAPPER_PID ]]; do
		(($(now) < deadline)) || die "RabbitMQ wrapper did not start (see $RMQ/log/startup.log)"
		sleep 0.05
	done
	rmq_wait_ready "startup"
	if ! rmq rabbitmqctl -q await_startup --timeout "$TIMEOUT" >/dev/null 2>&1; then
		rmq_logs
		die "rabbitmqctl await_startup failed for $RMQ_NODE"
	fi
}

rmq_stop() {
	local pid
	pid="$(rmq_node_pid)" || {
		rmq_kill_epmd
		return 0
	}
	log "stopping RabbitMQ node $RMQ_NODE"
	local beam
	beam="$(cat "$RMQ_PID_FILE" 2>/dev/null || true)"
	if ! rmqp 2 timeout "$TIMEOUT" rabbitmqctl -q stop >/dev/null 2>&1; then
		log "rabbitmqctl stop failed; sending SIGTERM to $pid"
		kill -TERM "$pid" 2>/dev/null || true
	fi
	local deadline=$(($(now) + TIMEOUT))
	while rmq_node_pid >/dev/null || { [[ $beam =~ ^[0-9]+$ ]] && kill -0 "$beam" 2>/dev/null; }; do
		if (($(now) >= deadline)); then
			log "RabbitMQ still running after ${TIMEOUT}s; killing it"
			pid="$(rmq_node_pid)" && kill -KILL "$pid" 2>/dev/null || true
			[[ $beam =~ ^[0-9]+$ ]] && kill -KILL "$beam" 2>/dev/null || true
			break
		fi
		sleep 0.2
	done
	rm -f "$RMQ_WRAPPER_PID" "$RMQ/running.fingerprint"
	rmq_kill_epmd
}

# Our own epmd (on ERL_EPMD_PORT) outlives the node; stop it once it is idle.
rmq_kill_epmd() {
	local epmd
	epmd="$(command -v epmd || ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | tail -n 1 || true)"
	[[ -n $epmd ]] || return 0
	ERL_EPMD_PORT="$ERL_EPMD_PORT" "$epmd" -names >/dev/null 2>&1 || return 0
	ERL_EPMD_PORT="$ERL_EPMD_PORT" "$epmd" -kill >/dev/null 2>&1 || true
}

# ------------------------------------------------------------------ cluster --
# A 3-node RabbitMQ cluster apart from the single node above: own node names,
# data dirs and ports, one shared Erlang cookie and epmd. Each function that
# works on one node calls cluster_node I (in a subshell) to point the RabbitMQ
# globals (RMQ, RMQ_NODE, ports) at node I, then reuses the single-node code.
CLUSTER_DIR="$DEV/rabbitmq-cluster"
CLUSTER_ENV_FILE="$DEV/cluster.env"
CLUSTER_SIZE=3

# Node I listens on RABBITMQ_CLUSTER_PORT + 10*(I-1) + 0 (AMQP), +1 (management),
# +2 (Prometheus), +3 (Erlang distribution); the cluster's epmd on RABBITMQ_CLUSTER_PORT + 30.
# The default lies above Linux's ephemeral port range (32768-60999): while a
# node is down (node-stop, node-kill), any outgoing connection on the machine
# may take one of its ports as its source port, and the node cannot start again
# until that connection closes (measured: a PostgreSQL client held one for minutes).
cluster_node() {
	local i="$1" p
	[[ $i =~ ^[1-3]$ ]] || die "cluster node must be 1, 2 or 3, not '$i'"
	p=$((RABBITMQ_CLUSTER_PORT + (i - 1) * 10))
	RMQ="$CLUSTER_DIR/n$i"
	RMQ_NODE="msgsvc-$HASH-n$i@localhost"
	RMQ_PID_FILE="$RMQ/rabbit.pid"
	RMQ_WRAPPER_PID="$RMQ/wrapper.pid"
	AMQP_PORT=$p
	RABBITMQ_MGMT_PORT=$((p + 1))
	RABBITMQ_PROM_PORT=$((p + 2))
	RABBITMQ_DIST_PORT=$((p + 3))
	ERL_EPMD_PORT=$((RABBITMQ_CLUSTER_PORT + 30))
}

cluster_node_name() { (cluster_node "$1" && printf '%s\n' "$RMQ_NODE"); }

# Every node gets the same Erlang cookie, made once per checkout.
cluster_cookie() {
	local i
	mkdir -p "$CLUSTER_DIR"
	if [[ ! -s $CLUSTER_DIR/cookie ]]; then
		(umask 077 && head -c 30 /dev/urandom | sha256sum | cut -c1-40 | tr 'a-f' 'A-F' >"$CLUSTER_DIR/cookie")
	fi
	for i in $(seq "$CLUSTER_SIZE"); do
		install -d -m 700 "$CLUSTER_DIR/n$i/home"
		if ! cmp -s "$CLUSTER_DIR/cookie" "$CLUSTER_DIR/n$i/home/.erlang.cookie"; then
			rm -f "$CLUSTER_DIR/n$i/home/.erlang.cookie"
			install -m 400 "$CLUSTER_DIR/cookie" "$CLUSTER_DIR/n$i/home/.erlang.cookie"
		fi
	done
}

# cluster_each FN: run FN I for every node at once, each in its own subshell; fail if one failed.
cluster_each() {
	local fn="$1" i pids=() rc=0
	for i in $(seq "$CLUSTER_SIZE"); do
		("$fn" "$i") &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i" || rc=1; done
	return "$rc"
}

cluster_node_start() {
	cluster_node "$1"
	if (($1 > 1)); then
		# A blank node joins node 1 at its first boot (classic config peer discovery), retrying while node 1
		# boots too; a node that is already a member ignores this.
		RMQ_EXTRA_CONF="cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $(cluster_node_name 1)
cluster_formation.classic_config.nodes.2 = $RMQ_NODE
cluster_formation.discovery_retry_limit = 120
cluster_formation.discovery_retry_interval = 1000
cluster_formation.lock_retry_limit = 120
cluster_formation.lock_retry_timeout = 1000"
		# RabbitMQ 3.10: a blank node that joins node 1 while node 1 itself boots can copy node 1's tables in
		# the shape of feature flags it has not enabled yet, and its boot fails (schema_integrity_check_failed,
		# table_attributes_mismatch; seen on a CI run), or asks node 1 for feature flags it has not registered
		# yet (incompatible_feature_flags, {badmap,undefined} in rabbit_feature_flags:enable_dependencies; seen
		# in a loop of the cluster test). Only a blank node gets there, so it starts once more blank, by which
		# time node 1 is up.
		local lines why
		lines=$(wc -l <"$RMQ/log/startup.log" 2>/dev/null || echo 0)
		if ! (rmq_start); then
			why=$(tail -n "+$((lines + 1))" "$RMQ/log/startup.log" 2>/dev/null |
				grep -o -m1 -E 'schema_integrity_check_failed|incompatible_feature_flags') || return 1
			log "node $1 joined node 1 mid-boot ($why): starting it again blank"
			rmq_stop
			rm -rf "$RMQ/mnesia"
			rmq_start
		fi
		return 0
	fi
	rmq_start
}

cluster_node_stop() {
	cluster_node "$1"
	rmq_stop
}

# cluster_node_join I: make node I a member of node 1's cluster. Once a member, a node rejoins by itself
# when it restarts, so this does nothing then.
cluster_node_join() {
	local seed
	seed="$(cluster_node_name 1)"
	cluster_node "$1"
	[[ $RMQ_NODE == "$seed" ]] && return 0
	[[ $(rmq rabbitmqctl -q eval "lists:member('$seed', rabbit_mnesia:cluster_nodes(all))." 2>/dev/null) == true ]] && return 0
	log "joining $RMQ_NODE to the cluster of $seed"
	rmq_ctl_quiet stop_app || die "rabbitmqctl stop_app failed on $RMQ_NODE"
	rmq_ctl_quiet reset || die "rabbitmqctl reset failed on $RMQ_NODE"
	rmq_ctl_quiet join_cluster "$seed" || die "rabbitmqctl join_cluster $seed failed on $RMQ_NODE"
	rmq_ctl_quiet start_app || die "rabbitmqctl start_app failed on $RMQ_NODE"
	rmq_wait_ready "join_cluster"
}

# cluster_list amqp|management|node: the nodes' AMQP URLs, management URLs or names, comma-separated.
cluster_list() {
	local kind="$1" i out=() p
	for i in $(seq "$CLUSTER_SIZE"); do
		p=$((RABBITMQ_CLUSTER_PORT + (i - 1) * 10))
		case "$kind" in
		amqp) out+=("amqp://guest:guest@127.0.0.1:$p/") ;;
		management) out+=("http://guest:guest@127.0.0.1:$((p + 1))") ;;
		node) out+=("$(cluster_node_name "$i")") ;;
		esac
	done
	local IFS=,
	printf '%s\n' "${out[*]}"
}

write_cluster_env_file() {
	local p=$RABBITMQ_CLUSTER_PORT
	cat >"$CLUSTER_ENV_FILE.tmp" <<EOF
DATABASE_URL=postgres://msgsvc:msgsvc@127.0.0.1:$PG_PORT/msgsvc?sslmode=disable
AMQP_URLS=$(cluster_list amqp)
RABBITMQ_MANAGEMENT_URL=http://guest:guest@127.0.0.1:$((p + 1))
RABBITMQ_PROMETHEUS_URL=http://127.0.0.1:$((p + 2))
RABBITMQ_CLUSTER_MANAGEMENT_URLS=$(cluster_list management)
RABBITMQ_CLUSTER_NODES=$(cluster_list node)
SERVICES_SCRIPT=$SCRIPT
EOF
	mv -f "$CLUSTER_ENV_FILE.tmp" "$CLUSTER_ENV_FILE"
}

# warn_ephemeral VAR [SPAN]: warn when the port in VAR, or the SPAN ports above it, lie in the kernel's
# ephemeral port range. While the server is down, any outgoing connection on the machine may take such a
# port as its source port, and the server then fails to start (eaddrinuse, or RabbitMQ's
# dist_port_already_used) though nothing listens there. The defaults lie outside that range.
warn_ephemeral() {
	local var="$1" span="${2:-0}" lo hi
	read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || return 0
	if ((${!var} + span >= lo && ${!var} <= hi)); then
		log "WARNING: $var=${!var} overlaps the ephemeral port range $lo-$hi: the server may fail to start (eaddrinuse) while another connection holds its port as its source port"
	fi
}

cmd_cluster_up() {
	local t0 i
	t0=$(now)
	warn_ephemeral RABBITMQ_CLUSTER_PORT 30
	take_lock
	ensure_packages
	save_settings
	pg_start
	cluster_cookie
	cluster_each cluster_node_start || die "a cluster node failed to start (logs: $CLUSTER_DIR/n*/log)"
	for i in $(seq 2 "$CLUSTER_SIZE"); do
		(cluster_node_join "$i") || die "node $i failed to join the cluster (logs: $CLUSTER_DIR/n$i/log)"
	done
	write_cluster_env_file
	log "cluster-up: RabbitMQ nodes $(cluster_list node), AMQP on 127.0.0.1 ports $RABBITMQ_CLUSTER_PORT, $((RABBITMQ_CLUSTER_PORT + 10)), $((RABBITMQ_CLUSTER_PORT + 20)) ($(($(now) - t0))s)"
	log "env file: $CLUSTER_ENV_FILE"
}

cluster_stop() {
	[[ -d $CLUSTER_DIR ]] || return 0
	cluster_each cluster_node_stop || die "a cluster node failed to stop"
	(cluster_node 1 && rmq_kill_epmd)
}

cmd_cluster_down() {
	local purge
	purge="$(purge_flag cluster-down "$@")"
	take_lock
	cluster_stop
	if ((purge)); then rm -rf "$CLUSTER_DIR" "$CLUSTER_ENV_FILE"; fi
	log "cluster down"
}

cmd_cluster_status() {
	local i ok=0
	for i in $(seq "$CLUSTER_SIZE"); do
		(
			cluster_node "$i"
			if rmq_node_pid >/dev/null && rmq_ready; then
				echo "node $i: running ($RMQ_NODE, beam pid $(cat "$RMQ_PID_FILE" 2>/dev/null), AMQP 127.0.0.1:$AMQP_PORT, management 127.0.0.1:$RABBITMQ_MGMT_PORT)"
			elif rmq_node_pid >/dev/null; then
				echo "node $i: $RMQ_NODE is up but AMQP/management/Prometheus do not answer (booting or app stopped)"
				exit 1
			else
				echo "node $i: stopped ($RMQ_NODE)"
				exit 1
			fi
		) || ok=1
	done
	return "$ok"
}

# node-kill I: SIGKILL node I's Erlang VM: a crash, without a clean shutdown or a goodbye to clients and peers.
cmd_node_kill() {
	cluster_node "$1"
	local beam
	beam="$(cat "$RMQ_PID_FILE" 2>/dev/null || true)"
	if ! [[ $beam =~ ^[0-9]+$ && -r /proc/$beam/environ ]] ||
		! tr '\0' '\n' <"/proc/$beam/environ" | grep -qxF -- "RABBITMQ_NODENAME=$RMQ_NODE"; then
		die "node $1 ($RMQ_NODE) is not running"
	fi
	kill -KILL "$beam"
	while kill -0 "$beam" 2>/dev/null; do sleep 0.05; done
	log "killed node $1 ($RMQ_NODE, beam pid $beam)"
}

# ------------------------------------------------------------- subcommands --
write_env_file() {
	cat >"$ENV_FILE.tmp" <<EOF
DATABASE_URL=postgres://msgsvc:msgsvc@127.0.0.1:$PG_PORT/msgsvc?sslmode=disable
AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/
RABBITMQ_MANAGEMENT_URL=http://guest:guest@127.0.0.1:$RABBITMQ_MGMT_PORT
RABBITMQ_PROMETHEUS_URL=http://127.0.0.1:$RABBITMQ_PROM_PORT
SERVICES_SCRIPT=$SCRIPT
EOF
	mv -f "$ENV_FILE.tmp" "$ENV_FILE"
}

cmd_up() {
	local t0 k
	t0=$(now)
	for k in PG_PORT AMQP_PORT RABBITMQ_MGMT_PORT RABBITMQ_PROM_PORT RABBITMQ_DIST_PORT ERL_EPMD_PORT; do
		warn_ephemeral "$k"
	done
	take_lock
	ensure_packages
	save_settings
	pg_start
	rmq_start
	rmq_warn_alarms
	write_env_file
	log "up: PostgreSQL 127.0.0.1:$PG_PORT, RabbitMQ AMQP 127.0.0.1:$AMQP_PORT / management 127.0.0.1:$RABBITMQ_MGMT_PORT / Prometheus 127.0.0.1:$RABBITMQ_PROM_PORT ($(($(now) - t0))s)"
	log "env file: $ENV_FILE"
}

# purge_flag COMMAND [ARG]: 1 when ARG is --purge, 0 without ARG, else COMMAND's usage error.
purge_flag() {
	case "${2:-}" in
	"") echo 0 ;;
	--purge) echo 1 ;;
	*) die "usage: $0 $1 [--purge]" ;;
	esac
}

cmd_down() {
	local purge
	purge="$(purge_flag down "$@")"
	take_lock
	cluster_stop
	rmq_stop
	pg_stop
	if ((purge)); then
		log "purging data"
		rm -rf "$RMQ" "$CLUSTER_DIR" "$ENV_FILE" "$CLUSTER_ENV_FILE" "$PORTS_FILE" "$DEV/apt.log"
		if [[ -L $PG_LINK ]]; then rm -f "$PG_LINK"; fi
		if ((EUID == 0)); then
			rm -rf "${PG_DIR%/postgres}"
		else
			rm -rf "$PG_DIR"
		fi
		rm -rf "${TMPDIR:-/tmp}/msgsvc-$HASH-pgsock"
	fi
	log "down"
}

cmd_status() {
	local ok=0 pid
	PG_BIN="$(pg_bin_dir || true)"
	if pg_running && pg_ready; then
		echo "postgres: running (127.0.0.1:$PG_PORT, data $PG_DATA)"
	elif pg_running; then
		echo "postgres: process running but not accepting connections on 127.0.0.1:$PG_PORT"
		ok=1
	else
		echo "postgres: stopped"
		ok=1
	fi
	if pid="$(rmq_node_pid)"; then
		if rmq_ready; then
			echo "rabbitmq: running (node $RMQ_NODE, pid $pid, AMQP 127.0.0.1:$AMQP_PORT, management 127.0.0.1:$RABBITMQ_MGMT_PORT, Prometheus 127.0.0.1:$RABBITMQ_PROM_PORT)"
		else
			echo "rabbitmq: node $RMQ_NODE (pid $pid) is up but AMQP/management/Prometheus not answering (app stopped or booting)"
			ok=1
		fi
	else
		echo "rabbitmq: stopped"
		ok=1
	fi
	return "$ok"
}

cmd_rmq_stop_app() {
	take_lock
	rmq_node_pid >/dev/null || die "RabbitMQ node $RMQ_NODE is not running; run: $SCRIPT up"
	rmq_ctl_quiet stop_app || die "rabbitmqctl stop_app failed"
	log "RabbitMQ app stopped (node $RMQ_NODE still up)"
}

cmd_rmq_start_app() {
	take_lock
	rmq_node_pid >/dev/null || die "RabbitMQ node $RMQ_NODE is not running; run: $SCRIPT up"
	rmq_ctl_quiet start_app || die "rabbitmqctl start_app failed"
	rmq_wait_ready "start_app"
	log "RabbitMQ app started"
}

usage() {
	cat >&2 <<EOF
usage: $0 COMMAND
  up                    install (apt) if needed, start PostgreSQL + RabbitMQ, write $ENV_FILE
  down [--purge]        stop both; --purge also deletes their data
  status                show state; exit 0 only if both run
  env                   print the env file path
  pg-stop | pg-start    stop / start PostgreSQL only
  rabbitmq-stop-app     rabbitmqctl stop_app (simulate a broker outage)
  rabbitmq-start-app    rabbitmqctl start_app, wait for AMQP, management and Prometheus
  rabbitmqctl ARGS...   rabbitmqctl against our node
 A 3-node RabbitMQ cluster, apart from the node above (ports from RABBITMQ_CLUSTER_PORT):
  cluster-up            start PostgreSQL and the 3 nodes, join them, write $CLUSTER_ENV_FILE
  cluster-down [--purge]  stop the 3 nodes; --purge also deletes their data
  cluster-status        show each node's state; exit 0 only if all 3 run
  cluster-env           print the cluster env file path
  node-stop N | node-start N | node-kill N
                        stop node N (1-3) cleanly, start it again, or SIGKILL its Erlang VM
  node-ctl N ARGS...    rabbitmqctl against node N
EOF
}

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	load_settings
	case "$cmd" in
	up) cmd_up ;;
	down) cmd_down "$@" ;;
	status) cmd_status ;;
	env)
		[[ -f $ENV_FILE ]] || log "warning: $ENV_FILE does not exist yet; run: $SCRIPT up"
		printf '%s\n' "$ENV_FILE"
		;;
	pg-stop)
		take_lock
		pg_stop
		;;
	pg-start)
		take_lock
		pg_start
		;;
	rabbitmq-stop-app) cmd_rmq_stop_app ;;
	rabbitmq-start-app) cmd_rmq_start_app ;;
	rabbitmqctl) rmq rabbitmqctl "$@" ;;
	cluster-up) cmd_cluster_up ;;
	cluster-down) cmd_cluster_down "$@" ;;
	cluster-status) cmd_cluster_status ;;
	cluster-env)
		[[ -f $CLUSTER_ENV_FILE ]] || log "warning: $CLUSTER_ENV_FILE does not exist yet; run: $SCRIPT cluster-up"
		printf '%s\n' "$CLUSTER_ENV_FILE"
		;;
	node-stop)
		take_lock
		(cluster_node_stop "${1:-}")
		;;
	node-start)
		take_lock
		(cluster_node_start "${1:-}")
		;;
	node-kill) cmd_node_kill "${1:-}" ;;
	node-ctl)
		cluster_node "${1:-}"
		shift
		rmq rabbitmqctl "$@"
		;;
	-h | --help | help) usage ;;
	*)
		usage
		exit 2
		;;
	esac
}

main "$@"
