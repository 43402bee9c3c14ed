#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (CI and tests/postgres_cluster.py).
#
#   .ci/postgres.sh install     apt-get install -y postgresql when no initdb is found (Debian's packages)
#   .ci/postgres.sh start DIR   initdb in DIR/data, start it on 127.0.0.1 at a free port (unix socket in DIR),
#                               create the database "medmeta"; print its URL on stdout (and into DIR/url):
#                               postgresql+asyncpg://postgres:PASSWORD@127.0.0.1:PORT/medmeta
#   .ci/postgres.sh stop DIR    stop the cluster and remove DIR
#
# initdb refuses to run as root: as root the cluster belongs to the "postgres" user (DIR is chowned to
# it); any other user runs it as itself. Password login (scram-sha-256) with a random password, so a
# wrong password is refused as on a real server. fsync is off: the data is thrown away.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

pg_bin() {  # the folder of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin
  local initdb
  if initdb=$(command -v initdb 2>/dev/null); then dirname "$(readlink -f "$initdb")"; return; fi
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ]; then echo "$dir"; return; fi
  done
  return 1
}

as_owner() {  # run "$@" as the cluster's owner
  if [ "$(id -u)" -eq 0 ]; then
    if command -v runuser >/dev/null; then runuser -u postgres -- "$@"; else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; fi
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install() {
  if pg_bin >/dev/null; then log "PostgreSQL found in $(pg_bin)"; return; fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing PostgreSQL from Debian's packages"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
  pg_bin >/dev/null || { log "apt-get installed postgresql but no initdb was found"; exit 1; }
}

start() {
  local dir=$1 bin port password
  bin=$(pg_bin) || { log "no PostgreSQL binaries (initdb): run '$0 install'"; exit 1; }
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    log "running as root and there is no 'postgres' user to own the cluster (initdb refuses root)"; exit 1
  fi
  mkdir -p "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  chmod 700 "$dir"
  password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  as_owner sh -c "umask 077; printf '%s\n' '$password' > '$dir/password'"
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 --pwfile="$dir/password" \
    -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { log "initdb failed:"; cat "$dir/initdb.log" >&2; exit 1; }
  for attempt in 1 2 3; do  # a free port can be taken between the look and the start: look again
    port=$(free_port)
    if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2; then
      break
    fi
    [ "$attempt" -lt 3 ] || { log "the cluster did not start:"; tail -20 "$dir/server.log" >&2; exit 1; }
  done
  PGPASSWORD=$password "$bin/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE medmeta" >&2
  local url="postgresql+asyncpg://postgres:$password@127.0.0.1:$port/medmeta"
  as_owner sh -c "umask 077; printf '%s\n' '$url' > '$dir/url'"
  log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, data in $dir/data"
  echo "$url"
}

stop() {
  local dir=$1 bin
  if [ -d "$dir/data" ] && bin=$(pg_bin); then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >&2 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  install) install ;;
  start) [ $# -eq 2 ] || { log "usage: $0 start DIR"; exit 2; }; start "$2" ;;
  stop) [ $# -eq 2 ] || { log "usage: $0 stop DIR"; exit 2; }; stop "$2" ;;
  *) log "usage: $0 install | start DIR | stop DIR"; exit 2 ;;
esac
