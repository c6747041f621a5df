#!/bin/sh
# systemctl: RUNBOOK LAB STAND-IN. This is not systemd's systemctl.
#
# The runbook lab's gateway hosts run without systemd. Inside each lab
# gateway's mount namespace this script is bind-mounted over
# /usr/bin/systemctl. It knows one unit, litellm.service (the lab's
# LiteLLM-compatible gateway), and keeps systemctl's command-line contract
# for the verbs a runner uses:
#
#   is-active UNIT...   prints active, inactive or failed per unit;
#                       exit 0 when all are active, else 3
#   status UNIT...      exit 0 running, 3 not running, 4 no such unit
#   start|stop|restart|try-restart|reload-or-restart UNIT...
#                       exit 0 done, 1 the unit failed to start,
#                       5 no such unit
#   is-enabled UNIT     prints enabled (exit 0); daemon-reload does nothing
#   --version           says that this is the lab stand-in
#
# start runs the gateway in its own session (it outlives the SSH session)
# with the environment of /etc/litellm/litellm.env and the configuration
# /etc/litellm/config.yaml, listening on 0.0.0.0:4000, and returns once the
# port listens or fails like a failing unit when the process dies (with
# --no-block it returns at once, as systemctl does). stop sends SIGTERM and
# returns once the process is gone.
set -u

LAB_DIR='@LAB_DIR@'
GATEWAY='@GATEWAY@'
UNIT=litellm.service
CONF=/etc/litellm/config.yaml
ENVFILE=/etc/litellm/litellm.env
# 4000 is 0FA0 in /proc/net/tcp.
PORT_HEX=0FA0

read -r HOST </proc/sys/kernel/hostname
RUN="$LAB_DIR/$HOST/run"
PIDFILE="$RUN/litellm.pid"
LOG="$RUN/litellm.log"

QUIET=
NOBLOCK=
PID=

say() { [ -n "$QUIET" ] || printf '%s\n' "$*"; }

# unit NAME: sets U to the full unit name; fails for units we do not have.
unit() {
	case $1 in
	*.*) U=$1 ;;
	*) U=$1.service ;;
	esac
	[ "$U" = "$UNIT" ]
}

# mainpid: PID from the pid file, empty when none.
mainpid() {
	PID=
	[ -r "$PIDFILE" ] && read -r PID <"$PIDFILE"
	case $PID in '' | *[!0-9]*) PID= ;; esac
}

# running: the recorded process is alive (not a zombie) and is the gateway.
running() {
	[ -n "$PID" ] || return 1
	st=
	read -r st 2>/dev/null </proc/"$PID"/stat || return 1
	case $st in *"(litellm"*) ;; *) return 1 ;; esac
	st=${st##*) }
	case ${st%% *} in Z | X | x) return 1 ;; esac
	return 0
}

# listening: something listens on port 4000 in this host's network
# namespace. Builtins only: no process per poll.
listening() {
	for f in /proc/net/tcp6 /proc/net/tcp; do
		[ -r "$f" ] || continue
		while read -r _sl local _rem st _rest; do
			case $local in *":$PORT_HEX") [ "$st" = 0A ] && return 0 ;; esac
		done <"$f"
	done
	return 1
}

# nap: sleep a little longer each time, up to 50 ms (sleep is a program:
# polling every few milliseconds would cost more than it saves).
NAP=0.005
nap() {
	sleep "$NAP"
	case $NAP in
	0.005) NAP=0.01 ;;
	0.01) NAP=0.02 ;;
	*) NAP=0.05 ;;
	esac
}

# state: active, failed (died without a stop) or inactive.
state() {
	mainpid
	if running; then
		S=active
	elif [ -n "$PID" ]; then
		S=failed
	else
		S=inactive
	fi
}

do_start() {
	state
	[ "$S" = active ] && return 0
	mkdir -p "$RUN"
	rm -f "$PIDFILE"
	if [ ! -r "$CONF" ]; then
		echo "Job for $UNIT failed because the control process exited with error code." >&2
		echo "lab stand-in: $CONF is missing" >>"$LOG"
		return 1
	fi
	# A unit starts with a clean environment plus its EnvironmentFile, and
	# never holds its caller's output open.
	(
		umask 077
		export -p >"$RUN/.caller-env"
		while IFS= read -r l; do
			case $l in "export "[A-Za-z_]*) ;; *) continue ;; esac
			v=${l#export }
			v=${v%%=*}
			case $v in PATH | LANG | TZ | *[!A-Za-z0-9_]*) ;; *) unset "$v" 2>/dev/null ;; esac
		done <"$RUN/.caller-env"
		rm -f "$RUN/.caller-env"
		export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		if [ -r "$ENVFILE" ]; then
			while IFS= read -r line || [ -n "$line" ]; do
				case $line in '' | '#'* | ';'*) continue ;; *=*) export "$line" ;; esac
			done <"$ENVFILE"
		fi
		umask 022
		exec setsid "$GATEWAY" --config "$CONF" --port 4000 --host 0.0.0.0
	) </dev/null >>"$LOG" 2>&1 &
	PID=$!
	echo "$PID" >"$PIDFILE"
	[ -n "$NOBLOCK" ] && return 0
	i=0
	while :; do
		if running; then
			listening && return 0
		else
			# Give the exec a moment: before it the process is still "sh".
			st=
			read -r st 2>/dev/null </proc/"$PID"/stat
			case $st in
			'' | *") Z "* | *") X "*)
				echo "Job for $UNIT failed because the control process exited with error code." >&2
				echo "See \"systemctl status $UNIT\" for details." >&2
				return 1
				;;
			esac
		fi
		i=$((i + 1))
		if [ "$i" -gt 1200 ]; then
			echo "Job for $UNIT failed because a timeout was exceeded." >&2
			kill -KILL "$PID" 2>/dev/null
			return 1
		fi
		nap
	done
}

do_stop() {
	mainpid
	if running; then
		kill -TERM "$PID" 2>/dev/null
		i=0
		while running; do
			i=$((i + 1))
			# About 90 s, as systemd's default stop timeout, then SIGKILL.
			if [ "$i" -eq 1800 ]; then
				kill -KILL "$PID" 2>/dev/null
			elif [ "$i" -gt 1900 ]; then
				echo "Failed to stop $UNIT: process $PID did not exit." >&2
				return 1
			fi
			nap
		done
	fi
	rm -f "$PIDFILE"
	return 0
}

do_status() {
	state
	case $S in
	active) active="active (running)" ;;
	failed) active="failed (Result: exit-code)" ;;
	*) active="inactive (dead)" ;;
	esac
	dot="○"
	[ "$S" = active ] && dot="●"
	[ "$S" = failed ] && dot="×"
	say "$dot $UNIT - LiteLLM proxy (runbook lab stand-in for systemd)"
	say "     Loaded: loaded (/etc/systemd/system/$UNIT; enabled; preset: enabled)"
	say "     Active: $active"
	[ "$S" = active ] && say "   Main PID: $PID (litellm-gateway)"
	say "     Config: $CONF"
	[ "$S" = active ] && return 0
	return 3
}

VERB=
UNITS=
for a in "$@"; do
	case $a in
	--version)
		echo "systemctl (runbook lab stand-in for systemd's systemctl; manages only $UNIT)"
		exit 0
		;;
	-q | --quiet) QUIET=1 ;;
	--no-block) NOBLOCK=1 ;;
	--no-pager | --no-ask-password | --full | -l | --now | --system) ;;
	-*)
		echo "systemctl (runbook lab stand-in): unsupported option $a" >&2
		exit 1
		;;
	*)
		if [ -z "$VERB" ]; then VERB=$a; else UNITS="$UNITS $a"; fi
		;;
	esac
done

case $VERB in
daemon-reload) exit 0 ;;
is-active | status | start | stop | restart | try-restart | reload-or-restart | is-enabled | is-failed) ;;
'')
	echo "systemctl (runbook lab stand-in): a command is required" >&2
	exit 1
	;;
*)
	echo "systemctl (runbook lab stand-in): unsupported command $VERB" >&2
	exit 1
	;;
esac
if [ -z "$UNITS" ]; then
	echo "Too few arguments." >&2
	exit 1
fi

rc=0
for u in $UNITS; do
	if ! unit "$u"; then
		case $VERB in
		is-active)
			say inactive
			rc=3
			;;
		is-failed)
			say inactive
			[ "$rc" -eq 0 ] && rc=1
			;;
		is-enabled)
			echo "Failed to get unit file state for $U: No such file or directory" >&2
			rc=1
			;;
		status)
			echo "Unit $U could not be found." >&2
			rc=4
			;;
		stop)
			echo "Failed to stop $U: Unit $U not loaded." >&2
			rc=5
			;;
		*)
			echo "Failed to $VERB $U: Unit $U not found." >&2
			rc=5
			;;
		esac
		continue
	fi
	case $VERB in
	is-active)
		state
		say "$S"
		[ "$S" = active ] || rc=3
		;;
	is-failed)
		state
		say "$S"
		[ "$S" = failed ] || { [ "$rc" -eq 0 ] && rc=1; }
		;;
	is-enabled) say enabled ;;
	status)
		do_status
		s=$?
		[ "$s" -gt "$rc" ] && rc=$s
		;;
	start) do_start || rc=1 ;;
	stop) do_stop || rc=1 ;;
	restart | reload-or-restart)
		do_stop
		do_start || rc=1
		;;
	try-restart)
		state
		if [ "$S" = active ]; then
			do_stop
			do_start || rc=1
		fi
		;;
	esac
done
exit "$rc"
