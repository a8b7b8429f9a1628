#!/usr/bin/env bash
# Start, inspect and stop a Dask cluster (one scheduler, N workers) on 127.0.0.1.
#
#   deploy/local/cluster.sh start DIR [--workers N] [--threads T] [--port P] [--no-nanny]
#   deploy/local/cluster.sh status DIR
#   deploy/local/cluster.sh stop DIR
#
# start: creates DIR (and DIR/logs), starts `dask scheduler` on 127.0.0.1 (port P; 0,
#   the default, lets the scheduler pick a free one) writing DIR/scheduler.json, then N
#   `dask worker`s (T threads each, OMP/OpenBLAS/MKL threads = T) named worker-0..N-1.
#   Every process runs in its own session (it outlives this script) and has its pid in
#   DIR/<name>.pid and its log in DIR/logs/<name>.log. Once the N workers are connected
#   it prints one line, the scheduler address (tcp://127.0.0.1:PORT), and exits 0; on a
#   failure it prints one line to stderr, stops what it started and exits non-zero.
# stop: SIGTERM to the workers then the scheduler, SIGKILL to whatever is left after
#   STOP_TIMEOUT s (15), pid files removed. It returns only once every process of the
#   cluster has exited: each pid of the pid files and every process in its session (a
#   nanny's worker, multiprocessing's helpers); exit 1, with one line on stderr and the pid
#   files kept, if any is still alive 10 s after SIGKILL. Only pids from DIR's pid files
#   whose command line still names dask/distributed (and their sessions) are signalled.
#   Stopping a stopped DIR is fine (exit 0). An exited process that its parent (init) has
#   not reaped yet, a zombie, counts as gone: it holds no memory, file or port.
# status: prints the scheduler address and the number of live processes; exit 0 if the
#   scheduler is alive, 1 otherwise.
#
# Needs bash >= 4.4. Environment: DASK (default `dask`) is the dask command, PYTHON
# (default `python3`) an interpreter with `distributed` (used to wait for the workers),
# DASHBOARD=1 a scheduler dashboard on 127.0.0.1, STOP_TIMEOUT (default 15) the seconds
# stop waits after SIGTERM before SIGKILL.
set -euo pipefail

PROG=cluster.sh
DASK=${DASK:-dask}
PYTHON=${PYTHON:-python3}
SCHEDULER_TIMEOUT=60
WORKERS_TIMEOUT=120
# seconds stop waits after SIGTERM before SIGKILL (environment STOP_TIMEOUT), and after SIGKILL
STOP_TIMEOUT=${STOP_TIMEOUT:-15}
KILL_TIMEOUT=10

usage() {
    echo "usage: $PROG start DIR [--workers N] [--threads T] [--port P] [--no-nanny] | $PROG stop DIR | $PROG status DIR" >&2
}

# one line on stderr, then exit (start's EXIT trap stops what was started)
die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

usage_error() {
    echo "$PROG: error: $* (usage: $PROG start|stop|status DIR [options])" >&2
    exit 2
}

is_uint() {
    [[ $1 =~ ^[0-9]+$ ]]
}

# alive PID: the process exists and is not a zombie
alive() {
    local pid=$1 state=""
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        # the state is the field after the parenthesised command name
        state=$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || state=""
        [[ $state != Z ]] || return 1
    fi
    return 0
}

# ours PID: alive and its command line names dask or distributed (so a pid reused by
# an unrelated process after a reboot or a crash is never signalled)
ours() {
    local pid=$1 cmdline=""
    alive "$pid" || return 1
    if [[ -r /proc/$pid/cmdline ]]; then
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || cmdline=""
    else
        cmdline=$(ps -p "$pid" -o command= 2>/dev/null) || cmdline=""
    fi
    [[ $cmdline == *dask* || $cmdline == *distributed* ]]
}

read_pid() {
    local file=$1 pid=""
    [[ -f $file ]] || return 1
    read -r pid <"$file" 2>/dev/null || true
    is_uint "$pid" && [[ $pid -gt 1 ]] || return 1
    echo "$pid"
}

# pid files of DIR, workers first, then the scheduler
pid_files() {
    local dir=$1 f
    for f in "$dir"/worker-*.pid; do
        [[ -e $f ]] && echo "$f"
    done
    [[ -e $dir/scheduler.pid ]] && echo "$dir/scheduler.pid"
    return 0
}

scheduler_address() {
    local file=$1/scheduler.json
    [[ -s $file ]] || return 1
    # scheduler.json is written by the scheduler: {"type": "Scheduler", "address": "tcp://...", ...}
    sed -n 's/.*"address": *"\([^"]*\)".*/\1/p' "$file" | head -n 1
}

# now_ms: a clock in milliseconds (EPOCHREALTIME in bash >= 5, else whole seconds)
now_ms() {
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        local t=${EPOCHREALTIME/[.,]/}
        echo $((10#$t / 1000))
    else
        echo $((SECONDS * 1000))
    fi
}

# live LEADER...: prints, one per line, every process still alive (not a zombie) of these
# sessions: each LEADER (started by setsid, so it leads its own session) and every process
# in its session (a nanny's worker, multiprocessing's helpers). Where ps cannot list
# sessions, the leaders alone.
live() {
    local pid sid stat table
    local -A leaders=() seen=()
    [[ $# -gt 0 ]] || return 0
    for pid in "$@"; do
        leaders[$pid]=1
    done
    if table=$(ps -e -o pid=,sid=,stat= 2>/dev/null); then
        while read -r pid sid stat; do
            if [[ -n ${leaders[$sid]:-} && $stat != Z* && -z ${seen[$pid]:-} ]]; then
                seen[$pid]=1
                echo "$pid"
            fi
        done <<<"$table"
    fi
    for pid in "$@"; do
        if [[ -z ${seen[$pid]:-} ]] && alive "$pid"; then
            seen[$pid]=1
            echo "$pid"
        fi
    done
    return 0
}

# wait_gone DEADLINE LEADER...: wait until no process of these sessions is alive (exit 0),
# or until the clock (now_ms) reaches DEADLINE (exit 1)
wait_gone() {
    local deadline=$1 left
    shift
    while :; do
        left=$(live "$@")
        [[ -n $left ]] || return 0
        [[ $(now_ms) -lt $deadline ]] || return 1
        sleep 0.1
    done
}

stop_cluster() {
    local dir=$1 f pid began left
    local -a files=() workers=() scheduler=() survivors=()
    [[ -d $dir ]] || return 0
    mapfile -t files < <(pid_files "$dir")
    for f in "${files[@]}"; do
        if pid=$(read_pid "$f") && ours "$pid"; then
            if [[ $f == */scheduler.pid ]]; then
                scheduler+=("$pid")
            else
                workers+=("$pid")
            fi
        fi
    done
    began=$(now_ms)
    # workers first (a worker asked to close while its scheduler goes away can hang), for
    # two thirds of STOP_TIMEOUT; then the scheduler, until STOP_TIMEOUT
    for pid in "${workers[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait_gone $((began + STOP_TIMEOUT * 2000 / 3)) "${workers[@]}" || true
    for pid in "${scheduler[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    if ! wait_gone $((began + STOP_TIMEOUT * 1000)) "${workers[@]}" "${scheduler[@]}"; then
        # SIGKILL to what is left: each leader's process group (setsid at start) and every
        # live process of the sessions
        for pid in "${workers[@]}" "${scheduler[@]}"; do
            if ours "$pid" && [[ $(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]]; then
                kill -KILL -- "-$pid" 2>/dev/null || true
            fi
        done
        for pid in $(live "${workers[@]}" "${scheduler[@]}"); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        # and wait for them to be gone: a SIGKILLed process exits once the kernel has
        # torn it down (at once, unless it sleeps uninterruptibly in I/O)
        if ! wait_gone $(($(now_ms) + KILL_TIMEOUT * 1000)) "${workers[@]}" "${scheduler[@]}"; then
            mapfile -t survivors < <(live "${workers[@]}" "${scheduler[@]}")
            echo "$PROG: error: process(es) ${survivors[*]} still alive ${KILL_TIMEOUT}s after SIGKILL; pid files kept in $dir" >&2
            return 1
        fi
    fi
    for f in "${files[@]}"; do
        rm -f "$f"
    done
    rm -f "$dir/scheduler.json"
    return 0
}

# launch NAME CMD...: CMD in a new session, stdin from /dev/null, output to DIR/logs/NAME.log,
# pid in DIR/NAME.pid (the pid of CMD itself: the wrapper shell execs it)
launch() {
    local name=$1
    shift
    local pidfile=$DIR/$name.pid log=$DIR/logs/$name.log
    rm -f "$pidfile"
    if command -v setsid >/dev/null 2>&1; then
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$log" 2>&1 &
    else
        bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$log" 2>&1 &
    fi
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidfile ]] && return 0
        sleep 0.05
    done
    die "$name did not start (see $log)"
}

STARTED=0
on_start_exit() {
    local rc=$?
    if [[ $rc -ne 0 && $STARTED -eq 0 ]]; then
        stop_cluster "$DIR" || true
    fi
    exit "$rc"
}

start_cluster() {
    local workers=2 threads=1 port=0 nanny=--nanny
    while [[ $# -gt 0 ]]; do
        case $1 in
            --workers | --threads | --port)
                [[ $# -ge 2 ]] || usage_error "$1 needs a value"
                is_uint "$2" || usage_error "$1 must be a non-negative integer, got '$2'"
                case $1 in
                    --workers) workers=$((10#$2)) ;;
                    --threads) threads=$((10#$2)) ;;
                    --port) port=$((10#$2)) ;;
                esac
                shift 2
                ;;
            --workers=* | --threads=* | --port=*)
                local opt=${1%%=*} val=${1#*=}
                set -- "$opt" "$val" "${@:2}"
                ;;
            --no-nanny)
                nanny=--no-nanny
                shift
                ;;
            *) usage_error "unknown option '$1'" ;;
        esac
    done
    [[ $workers -ge 1 ]] || usage_error "--workers must be at least 1"
    [[ $threads -ge 1 ]] || usage_error "--threads must be at least 1"
    [[ $port -le 65535 ]] || usage_error "--port must be at most 65535"
    command -v "$DASK" >/dev/null 2>&1 || die "dask command '$DASK' not found (set DASK)"
    command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found (set PYTHON)"

    if [[ -d $DIR ]]; then
        local pid
        if pid=$(read_pid "$DIR/scheduler.pid") && ours "$pid"; then
            echo "$PROG: error: a cluster is already running in $DIR (scheduler pid $pid); stop it first" >&2
            exit 1
        fi
    fi
    mkdir -p "$DIR/logs" || die "cannot create $DIR/logs"
    DIR=$(cd "$DIR" && pwd)
    # leftovers of an earlier cluster (all dead, checked above) would fool the waits below
    stop_cluster "$DIR"
    trap on_start_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # no dashboard (`dask scheduler --no-dashboard`, in every distributed the `dask` extra allows);
    # DASHBOARD=1 serves one on a free port of 127.0.0.1 (its address is in logs/scheduler.log)
    local dashboard=(--no-dashboard)
    if [[ ${DASHBOARD:-0} == 1 ]]; then
        dashboard=(--dashboard-address 127.0.0.1:0)
    fi
    launch scheduler "$DASK" scheduler --host 127.0.0.1 --port "$port" \
        --scheduler-file "$DIR/scheduler.json" "${dashboard[@]}"
    local spid i address=""
    spid=$(read_pid "$DIR/scheduler.pid") || die "no scheduler pid in $DIR/scheduler.pid"
    for ((i = 0; i < SCHEDULER_TIMEOUT * 10; i++)); do
        # the address, and the file complete (the workers read it too)
        if address=$(scheduler_address "$DIR") && [[ -n $address ]] &&
            [[ $(tail -c 3 "$DIR/scheduler.json") == *"}"* ]]; then
            break
        fi
        address=""
        alive "$spid" || die "the scheduler exited at start (see $DIR/logs/scheduler.log)"
        sleep 0.1
    done
    [[ -n $address ]] || die "no $DIR/scheduler.json after ${SCHEDULER_TIMEOUT}s (see $DIR/logs/scheduler.log)"

    export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
    for ((i = 0; i < workers; i++)); do
        launch "worker-$i" "$DASK" worker --scheduler-file "$DIR/scheduler.json" --host 127.0.0.1 \
            --nthreads "$threads" --name "worker-$i" "$nanny" --no-dashboard \
            --local-directory "$DIR/work"
    done

    # wait until the N workers are connected; give up early if a process died
    local wpids=() wpid
    for ((i = 0; i < workers; i++)); do
        wpid=$(read_pid "$DIR/worker-$i.pid") || die "no pid for worker-$i in $DIR/worker-$i.pid"
        wpids+=("$wpid")
    done
    if ! "$PYTHON" - "$DIR/scheduler.json" "$workers" "$WORKERS_TIMEOUT" "$spid" "${wpids[@]}" \
        >>"$DIR/logs/start.log" 2>&1 <<'PY'; then
import os, sys, time
from distributed import Client

scheduler_file, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
pids = [int(p) for p in sys.argv[4:]]


def dead(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


deadline = time.monotonic() + timeout
with Client(scheduler_file=scheduler_file, timeout="30s", set_as_default=False) as client:
    while True:
        count = len(client.nthreads())
        if count >= n:
            break
        gone = [p for p in pids if dead(p)]
        if gone:
            sys.exit(f"process(es) {gone} exited with {count} of {n} workers connected")
        if time.monotonic() > deadline:
            sys.exit(f"{count} of {n} workers connected after {timeout:.0f}s")
        time.sleep(0.1)
PY
        local why
        why=$(tail -n 1 "$DIR/logs/start.log" 2>/dev/null) || why=""
        die "the $workers workers did not connect${why:+: $why} (logs in $DIR/logs)"
    fi
    STARTED=1
    echo "$address"
}

status_cluster() {
    local f pid live=0 sched_alive=1 address
    address=$(scheduler_address "$DIR" 2>/dev/null) || address=""
    if [[ -d $DIR ]]; then
        while IFS= read -r f; do
            if pid=$(read_pid "$f") && ours "$pid"; then
                live=$((live + 1))
                [[ $f == */scheduler.pid ]] && sched_alive=0
            fi
        done < <(pid_files "$DIR")
    fi
    echo "${address:-no scheduler}"
    echo "$live live process(es)"
    return "$sched_alive"
}

[[ $# -ge 1 ]] || { usage; exit 2; }
COMMAND=$1
shift
case $COMMAND in
    -h | --help | help)
        usage
        exit 0
        ;;
    start | stop | status) ;;
    *) usage_error "unknown command '$COMMAND'" ;;
esac
[[ $# -ge 1 && -n $1 && $1 != -* ]] || usage_error "$COMMAND needs a directory"
is_uint "$STOP_TIMEOUT" || usage_error "STOP_TIMEOUT must be a non-negative integer (seconds), got '$STOP_TIMEOUT'"
STOP_TIMEOUT=$((10#$STOP_TIMEOUT))
DIR=$1
shift
case $COMMAND in
    start) start_cluster "$@" ;;
    stop)
        [[ $# -eq 0 ]] || usage_error "stop takes no options"
        stop_cluster "$DIR"
        ;;
    status)
        [[ $# -eq 0 ]] || usage_error "status takes no options"
        status_cluster
        ;;
esac
