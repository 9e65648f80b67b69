#!/bin/sh
# Entry point of the envoy service in docker-compose.yml (run with sh; mounted read-only).
#
# Started as root: gives the log volume (/var/log/envoy, where Envoy writes access.log and the
# log shipper reads both files) to the image's unprivileged `envoy` user (uid 101), then runs
# itself again as that user, as the image's own /docker-entrypoint.sh does.
#
# As envoy: runs Envoy with its application log (which carries the filter's audit lines) going
# both to /var/log/envoy/envoy.log, for Alloy, and to stdout, for `docker compose logs envoy`.
# Envoy replaces this shell (exec), so it is PID 1 and receives SIGTERM from `docker compose stop`.
set -eu
log_dir=/var/log/envoy

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$log_dir"
    chown envoy:envoy "$log_dir"
    # As the image's entrypoint does: let envoy write to the container's stdout/stderr.
    chown envoy:envoy /dev/stdout /dev/stderr 2>/dev/null || true
    exec su-exec envoy /bin/sh "$0" "$@"
fi

fifo="$(mktemp -u /tmp/envoy-log.XXXXXX)"
mkfifo "$fifo"
tee -a "$log_dir/envoy.log" <"$fifo" &
exec envoy "$@" 2>"$fifo"
