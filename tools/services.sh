#!/usr/bin/env bash
# The servers the tests and the distributed mode use, started and reachable,
# as root, with or without systemd (a container or chroot has none):
#   PostgreSQL 127.0.0.1:5432 (pg_ctlcluster, as the cluster's owner postgres)
#   MariaDB    127.0.0.1:3306 (mariadbd --user=mysql)
#   RabbitMQ   127.0.0.1:5672 guest/guest (rabbitmq-server -detached, as rabbitmq)
# and what the tests need to log in, in /etc/tether/test-databases.json (0600):
#   {"postgresql": "postgresql+psycopg2://USER[:PW]@127.0.0.1:5432",
#    "mariadb": "mysql+pymysql://USER[:PW]@127.0.0.1:3306",
#    "rabbitmq": "rabbit://guest:guest@127.0.0.1:5672/"}
# When the machine already lets postgres@127.0.0.1 and root@127.0.0.1 in
# without a password (this kind of CI machine), those are written as they are;
# otherwise a `tether_test` role / user with a generated password (CREATEDB on
# PostgreSQL, every privilege on `tether_%` databases on MariaDB) is made.
# Idempotent; needs no network.  Called by tools/bootstrap.sh, and by the
# integration tests when a server is not listening.
set -euo pipefail
OUT=${TETHER_TEST_DATABASES:-/etc/tether/test-databases.json}
USER_NAME=tether_test

say() { echo "services: $*"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # PORT WHAT SECONDS
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    listening "$1" && return 0
    sleep 0.1
  done
  echo "services: $2 is not listening on 127.0.0.1:$1 after $3 s" >&2
  return 1
}

# the password of an earlier run, so the roles and the file stay as they are
password=""
if [ -f "$OUT" ]; then
  password=$(python3 -c 'import json, sys, urllib.parse as u
for url in json.load(open(sys.argv[1])).values():
    p = u.urlsplit(url).password
    if p:
        print(p)
        break' "$OUT" 2>/dev/null || true)
fi
new_password() {
  [ -n "$password" ] || password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
}

# -- PostgreSQL ---------------------------------------------------------------
command -v pg_lsclusters >/dev/null || { echo "services: postgresql is not installed (tools/bootstrap.sh)" >&2; exit 1; }
if ! listening 5432; then
  clusters=$(pg_lsclusters --no-header | awk '{print $1 " " $2}')
  if [ -z "$clusters" ]; then
    say "creating the PostgreSQL cluster"
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    pg_createcluster "$version" main >/dev/null
    clusters="$version main"
  fi
  while read -r version name; do
    say "starting PostgreSQL $version/$name"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
  done <<<"$clusters"
  wait_port 5432 PostgreSQL 60
fi
if psql -h 127.0.0.1 -U postgres -w -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  pg_url="postgresql+psycopg2://postgres@127.0.0.1:5432"
else
  new_password
  runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<SQL
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$USER_NAME') THEN
    CREATE ROLE $USER_NAME LOGIN CREATEDB;
  END IF;
END\$\$;
ALTER ROLE $USER_NAME LOGIN CREATEDB PASSWORD '$password';
SQL
  PGPASSWORD=$password psql -h 127.0.0.1 -U "$USER_NAME" -w -d postgres -tAc 'select 1' >/dev/null
  pg_url="postgresql+psycopg2://$USER_NAME:$password@127.0.0.1:5432"
fi

# -- MariaDB ------------------------------------------------------------------
[ -x /usr/sbin/mariadbd ] || { echo "services: mariadb-server is not installed (tools/bootstrap.sh)" >&2; exit 1; }
if ! listening 3306; then
  say "starting MariaDB"
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  # mariadbd refuses to run as root: it drops to mysql itself with --user
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_port 3306 MariaDB 60
fi
if mariadb -h 127.0.0.1 -u root -e 'select 1' >/dev/null 2>&1; then
  my_url="mysql+pymysql://root@127.0.0.1:3306"
else
  new_password
  # root over the socket (Debian's unix_socket authentication)
  mariadb -u root <<SQL
CREATE USER IF NOT EXISTS '$USER_NAME'@'127.0.0.1';
CREATE USER IF NOT EXISTS '$USER_NAME'@'localhost';
ALTER USER '$USER_NAME'@'127.0.0.1' IDENTIFIED BY '$password';
ALTER USER '$USER_NAME'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON \`tether\_%\`.* TO '$USER_NAME'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`tether\_%\`.* TO '$USER_NAME'@'localhost';
SQL
  mariadb -h 127.0.0.1 -u "$USER_NAME" "-p$password" -e 'select 1' >/dev/null
  my_url="mysql+pymysql://$USER_NAME:$password@127.0.0.1:3306"
fi

# -- RabbitMQ -----------------------------------------------------------------
command -v rabbitmq-server >/dev/null || { echo "services: rabbitmq-server is not installed (tools/bootstrap.sh)" >&2; exit 1; }
if ! listening 5672; then
  say "starting RabbitMQ"
  rabbitmq-server -detached  # (Debian's wrapper runs it as rabbitmq)
  wait_port 5672 RabbitMQ 120
fi

# -- what the tests read --------------------------------------------------------
install -d -m 0755 "$(dirname "$OUT")"
python3 - "$OUT" "$pg_url" "$my_url" <<'PY'
import json, os, sys
out, pg, my = sys.argv[1:]
text = json.dumps({"postgresql": pg, "mariadb": my,
                   "rabbitmq": "rabbit://guest:guest@127.0.0.1:5672/"}, indent=2) + "\n"
try:
    with open(out) as f:
        if f.read() == text and os.stat(out).st_mode & 0o077 == 0:
            sys.exit(0)
except FileNotFoundError:
    pass
tmp = f"{out}.tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write(text)
os.chmod(tmp, 0o600)
os.replace(tmp, out)
print(f"services: wrote {out}")
PY
say "PostgreSQL, MariaDB and RabbitMQ up"
