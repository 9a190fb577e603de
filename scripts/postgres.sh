#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests.
#
#   scripts/postgres.sh start DIR   # prints postgresql://USER@127.0.0.1:PORT/secfl (last line)
#   scripts/postgres.sh stop DIR
#
# Installs Debian's `postgresql` package when no initdb is found (apt-get, as root),
# creates a cluster in DIR/data (as the `postgres` user when run as root), and runs it
# on 127.0.0.1 with a free port and its unix socket in DIR. Authentication is `trust`
# on loopback: a test server only, never for real data. Both commands are idempotent.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_bindir() {
  local cand
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return 0
  fi
  cand=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$cand" ] && [ -x "$cand/initdb" ]; then
    echo "$cand"
    return 0
  fi
  return 1
}

install_postgres() {
  [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed and we are not root (apt-get install postgresql)"
  command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is missing"
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null ||
    die "apt-get install postgresql failed"
}

# Run a command as the cluster's owner.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() { [ -f "$dir/data/postmaster.pid" ] && as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; }

url() {
  local user
  user=$(cat "$dir/user")
  echo "postgresql://$user@127.0.0.1:$(cat "$dir/port")/secfl"
}

start() {
  bindir=$(find_bindir) || { install_postgres; bindir=$(find_bindir) || die "initdb not found after install"; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  local user
  if [ "$(id -u)" -eq 0 ]; then
    getent passwd postgres >/dev/null || die "the postgres user is missing (is the postgresql package installed?)"
    user=postgres
    chown postgres: "$dir"
    chmod 700 "$dir"
    runuser -u postgres -- test -w "$dir" ||
      die "the postgres user cannot reach $dir (a parent directory is private); use a directory under /tmp"
  else
    user=$(id -un)
  fi
  echo "$user" > "$dir/user"

  if running; then
    url
    return 0
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_owner "$bindir/initdb" -D "$dir/data" -U "$user" --auth=trust --encoding=UTF8 \
      --no-locale >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  fi

  local attempt port
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_in_use "$port" && continue
    if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$dir' -c max_connections=200" \
        start >/dev/null 2>&1; then
      echo "$port" > "$dir/port.tmp" && mv "$dir/port.tmp" "$dir/port"
      break
    fi
    log "start on port $port failed (attempt $attempt), retrying"
    port=""
  done
  [ -n "${port:-}" ] || { tail -n 20 "$dir/server.log" >&2 || true; die "the server did not start"; }

  if ! as_owner "$bindir/psql" -h "$dir" -p "$port" -U "$user" -d postgres -tAqc \
      "SELECT 1 FROM pg_database WHERE datname = 'secfl'" | grep -q 1; then
    as_owner "$bindir/createdb" -h "$dir" -p "$port" -U "$user" secfl || die "createdb secfl failed"
  fi
  url
}

stop() {
  [ -d "$dir/data" ] || return 0
  bindir=$(find_bindir) || return 0
  if running; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
      die "pg_ctl stop failed"
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
