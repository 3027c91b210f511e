# Starts a throwaway MariaDB 10.11 configured for CDC (row binlog, full row
# images, full metadata) with a replication user cdc/cdc.
#   maria_start DIR PORT    -> server running, data in DIR/data, binlog in
#                              DIR/binlog.*, log in DIR/error.log
#   maria_stop DIR
#   maria_sql DIR [DATABASE] [mariadb args...]   -> the mariadb CLI as root,
#                              utf8mb4 (statements on stdin, or -e "SQL")
# The port is kept in DIR/port so maria_sql and maria_stop need only DIR.
MARIADBD=/usr/sbin/mariadbd

maria_start() {
  local dir=$1 port=$2
  maria_stop "$dir"
  rm -rf "$dir"
  mkdir -p "$dir/tmp"
  echo "$port" >"$dir/port"
  # tmpdir is private: two servers bootstrapping at once in /tmp collide.
  cat >"$dir/my.cnf" <<CONF
[mariadbd]
user=root
datadir=$dir/data
socket=$dir/mariadb.sock
pid-file=$dir/mariadb.pid
log_error=$dir/error.log
tmpdir=$dir/tmp
port=$port
bind-address=127.0.0.1
skip-name-resolve
server_id=1
log_bin=$dir/binlog
binlog_format=ROW
binlog_row_image=FULL
binlog_row_metadata=FULL
innodb_flush_log_at_trx_commit=2
sync_binlog=0
character-set-server=utf8mb4
innodb_buffer_pool_size=64M
innodb_log_file_size=16M
performance_schema=OFF
CONF
  if ! mariadb-install-db --defaults-file="$dir/my.cnf" \
      --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1; then
    cat "$dir/install.log" "$dir/error.log" >&2 2>/dev/null
    echo "maria_start: mariadb-install-db failed" >&2
    return 1
  fi
  # setsid: the server must not get the terminal's Ctrl-C before the
  # caller's cleanup has stopped the daemon reading from it.
  setsid "$MARIADBD" --defaults-file="$dir/my.cnf" </dev/null >/dev/null 2>&1 &
  local _
  for _ in $(seq 1 600); do
    if mariadb-admin --no-defaults -h127.0.0.1 -P"$port" -uroot --connect-timeout=1 ping >/dev/null 2>&1; then
      maria_sql "$dir" "" -e "CREATE USER IF NOT EXISTS cdc@'%' IDENTIFIED BY 'cdc';
        GRANT SELECT, RELOAD, REPLICATION SLAVE, BINLOG MONITOR, REPLICATION CLIENT ON *.* TO cdc@'%';"
      return
    fi
    sleep 0.1
  done
  cat "$dir/error.log" >&2
  echo "maria_start: mariadbd did not answer on port $port within 60 s" >&2
  return 1
}

maria_stop() {
  local dir=$1 pid _
  [ -f "$dir/mariadb.pid" ] || return 0
  pid=$(cat "$dir/mariadb.pid")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

maria_sql() {
  local dir=$1 database=${2:-}
  shift 2 || shift $#
  mariadb --no-defaults --default-character-set=utf8mb4 -h127.0.0.1 -P"$(cat "$dir/port")" -uroot \
    "$@" ${database:+"$database"}
}

# Also in pg.sh; defined here too so this file stands alone.
declare -F free_port >/dev/null || free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
