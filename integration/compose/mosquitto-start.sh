#!/bin/sh
# Starts Mosquitto with its dynamic security plugin (SPEC §19), as espmdm's
# stacks (the processes and containers launchers) and compose.yaml run it:
#
#   mosquitto-start.sh STATE_FILE CONFIG_FILE
#
# CONFIG_FILE loads the plugin with STATE_FILE as its plugin_opt_config_file.
# On the first start, while STATE_FILE does not exist, it is made holding
# espmdm's own account, MQTT_ADMIN_USER with MQTT_ADMIN_PASSWORD (from the
# environment; the password is hashed by mosquitto_ctrl, read from its
# standard input, never put on a command line), and these roles:
#
#   espmdm-admin      espmdm's: manages the plugin over $CONTROL/dynamic-security/v1,
#                     is the only account that may publish on iotsupport/#,
#                     and may subscribe to everything
#   espmdm-anonymous  what clients without an account may do while the listener
#                     lets them in (allow_anonymous): publish and subscribe as
#                     before accounts existed, except publishing on iotsupport/#
#
# Device accounts are made by espmdm later. Every later start keeps the file:
# the plugin rewrites it after each change, so accounts survive restarts
# where STATE_FILE's directory does. When run as root the file's directory
# is given to the mosquitto user, whom the broker drops to. MOSQUITTO and
# MOSQUITTO_CTRL name the programs (default: found on PATH).
set -eu

state=${1:?usage: mosquitto-start.sh STATE_FILE CONFIG_FILE}
conf=${2:?usage: mosquitto-start.sh STATE_FILE CONFIG_FILE}
mosquitto=${MOSQUITTO:-mosquitto}
ctrl=${MOSQUITTO_CTRL:-mosquitto_ctrl}
dir=$(dirname "$state")

if [ ! -s "$state" ]; then
	user=${MQTT_ADMIN_USER:-}
	case $user in
	"" | *[!A-Za-z0-9_.-]*)
		echo "mosquitto-start: MQTT_ADMIN_USER must be set to letters, digits, '_', '.' and '-' only" >&2
		exit 1
		;;
	esac
	if [ -z "${MQTT_ADMIN_PASSWORD:-}" ]; then
		echo "mosquitto-start: MQTT_ADMIN_PASSWORD must be set (the first start makes espmdm's broker account)" >&2
		exit 1
	fi
	mkdir -p "$dir"
	tmp=$state.init
	rm -f "$tmp"
	# mosquitto_ctrl asks for the password twice.
	if ! printf '%s\n%s\n' "$MQTT_ADMIN_PASSWORD" "$MQTT_ADMIN_PASSWORD" | "$ctrl" dynsec init "$tmp" "$user" >/dev/null; then
		rm -f "$tmp"
		echo "mosquitto-start: $ctrl dynsec init failed" >&2
		exit 1
	fi
	# The hash, salt and iteration count it made (one "key": value per line).
	hash=$(sed -n 's/^[[:space:]]*"password":[[:space:]]*"\([A-Za-z0-9+/=]*\)".*/\1/p' "$tmp")
	salt=$(sed -n 's/^[[:space:]]*"salt":[[:space:]]*"\([A-Za-z0-9+/=]*\)".*/\1/p' "$tmp")
	iterations=$(sed -n 's/^[[:space:]]*"iterations":[[:space:]]*\([0-9]*\).*/\1/p' "$tmp")
	case "$hash:$salt:$iterations" in
	*::* | :* | *:)
		rm -f "$tmp"
		echo "mosquitto-start: cannot read the password hash that $ctrl dynsec init wrote" >&2
		exit 1
		;;
	esac
	cat >"$tmp" <<EOF
{
	"defaultACLAccess": {
		"publishClientSend": false,
		"publishClientReceive": true,
		"subscribe": false,
		"unsubscribe": true
	},
	"clients": [{
		"username": "$user",
		"textname": "espmdm",
		"password": "$hash",
		"salt": "$salt",
		"iterations": $iterations,
		"roles": [{"rolename": "espmdm-admin"}]
	}],
	"groups": [{
		"groupname": "anonymous",
		"textname": "clients without an account",
		"roles": [{"rolename": "espmdm-anonymous"}],
		"clients": []
	}],
	"anonymousGroup": "anonymous",
	"roles": [{
		"rolename": "espmdm-admin",
		"textname": "espmdm: manages the accounts, the only publisher on iotsupport/#",
		"acls": [
			{"acltype": "publishClientSend", "topic": "\$CONTROL/dynamic-security/#", "priority": 0, "allow": true},
			{"acltype": "publishClientReceive", "topic": "\$CONTROL/dynamic-security/#", "priority": 0, "allow": true},
			{"acltype": "subscribePattern", "topic": "\$CONTROL/dynamic-security/#", "priority": 0, "allow": true},
			{"acltype": "publishClientSend", "topic": "iotsupport/#", "priority": 0, "allow": true},
			{"acltype": "publishClientReceive", "topic": "\$SYS/#", "priority": 0, "allow": true},
			{"acltype": "subscribePattern", "topic": "\$SYS/#", "priority": 0, "allow": true},
			{"acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": true},
			{"acltype": "unsubscribePattern", "topic": "#", "priority": 0, "allow": true}
		]
	}, {
		"rolename": "espmdm-anonymous",
		"textname": "clients without an account: as before accounts, but no publishing on iotsupport/#",
		"acls": [
			{"acltype": "publishClientSend", "topic": "iotsupport/#", "priority": 1, "allow": false},
			{"acltype": "publishClientSend", "topic": "#", "priority": 0, "allow": true},
			{"acltype": "subscribePattern", "topic": "#", "priority": 0, "allow": true},
			{"acltype": "unsubscribePattern", "topic": "#", "priority": 0, "allow": true}
		]
	}]
}
EOF
	mv "$tmp" "$state"
fi

if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
	chown mosquitto:mosquitto "$dir" "$state"
fi
unset MQTT_ADMIN_PASSWORD
exec "$mosquitto" -c "$conf"
