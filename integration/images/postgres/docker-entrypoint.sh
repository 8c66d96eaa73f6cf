#!/bin/bash
# Entry point of espmdm-local/postgres (written for espmdm): initialises
# PGDATA on first start from the POSTGRES_* variables, runs the scripts in
# /docker-entrypoint-initdb.d once, then runs postgres as the postgres user.
set -euo pipefail

if [ "${1:0:1}" = "-" ]; then
	set -- postgres "$@"
fi
if [ "$1" != "postgres" ]; then
	exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	chown -R postgres:postgres "$PGDATA" /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
		echo "espmdm-local/postgres: the database is uninitialized and POSTGRES_PASSWORD is empty;" >&2
		echo "  set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust to allow any connection without one)" >&2
		exit 1
	fi
	pwargs=()
	if [ -n "${POSTGRES_PASSWORD:-}" ]; then
		pwfile=$(mktemp)
		printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
		pwargs=(--pwfile="$pwfile")
	fi
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words
	initdb --username="$user" "${pwargs[@]}" -E UTF8 ${POSTGRES_INITDB_ARGS:-} >/dev/null
	rm -f "${pwfile:-}"
	printf '\nlisten_addresses = '"'"'*'"'"'\n' >> "$PGDATA/postgresql.conf"
	printf 'host all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

	# A server on the unix socket only, for setting up.
	pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -k /var/run/postgresql" start >/dev/null
	psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc -h /var/run/postgresql -U "$user" -d postgres -q)
	if [ "$db" != postgres ]; then
		"${psql[@]}" -c "CREATE DATABASE \"$db\""
	fi
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case $f in
		*.sh) echo "espmdm-local/postgres: running $f"; . "$f" ;;
		*.sql) echo "espmdm-local/postgres: running $f"; "${psql[@]}" -d "$db" -f "$f" ;;
		*.sql.gz) echo "espmdm-local/postgres: running $f"; gunzip -c "$f" | "${psql[@]}" -d "$db" ;;
		*) echo "espmdm-local/postgres: ignoring $f" ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
	echo "espmdm-local/postgres: database initialised"
fi

exec "$@"
