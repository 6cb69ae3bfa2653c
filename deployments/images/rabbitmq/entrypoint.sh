#!/bin/sh
# Entrypoint of the local RabbitMQ image (Debian's rabbitmq-server), honouring the official image's variables:
# RABBITMQ_DEFAULT_USER, RABBITMQ_DEFAULT_PASS and RABBITMQ_DEFAULT_VHOST (written to conf.d/05-env.conf, so a
# mounted conf.d file or RABBITMQ_CONFIG_FILE still wins), with the official defaults: guest may log in from
# anywhere, listeners on 5672/15672/15692, the management and Prometheus plugins enabled, logs on stdout.
# The server runs as the rabbitmq user; the node name follows the container's host name.
set -eu

if [ "${1:-}" != rabbitmq-server ]; then exec "$@"; fi

if [ "$(id -u)" = 0 ]; then
  conf=/etc/rabbitmq/conf.d/05-env.conf
  : >"$conf"
  [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER" >>"$conf"
  [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS" >>"$conf"
  [ -z "${RABBITMQ_DEFAULT_VHOST:-}" ] || echo "default_vhost = $RABBITMQ_DEFAULT_VHOST" >>"$conf"
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
  # The node's Erlang cookie (made per data directory when missing); root gets a copy, so that a health check
  # (rabbitmq-diagnostics, run as root by docker) may talk to the node.
  cookie=/var/lib/rabbitmq/.erlang.cookie
  [ -s "$cookie" ] || od -An -N20 -tx1 /dev/urandom | tr -d ' \n' >"$cookie"
  chown rabbitmq:rabbitmq "$cookie" && chmod 400 "$cookie"
  cp "$cookie" /root/.erlang.cookie && chmod 400 /root/.erlang.cookie
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq "$0" "$@"
fi
exec /usr/lib/rabbitmq/bin/rabbitmq-server
