#!/usr/bin/env bash
# Runs star_jax on a Cloud TPU VM: create (or reuse) the VM, install this checkout on every worker,
# start the STaR run under nohup, watch it, fetch the results, delete the VM.
#
#   ./launch_tpu.sh all    --name=star --zone=us-central2-b --workdir=gs://my-bucket/run1 --spot
#   ./launch_tpu.sh status --name=star --zone=us-central2-b
#   ./launch_tpu.sh fetch  --name=star --zone=us-central2-b --workdir=gs://my-bucket/run1
#   ./launch_tpu.sh delete --name=star --zone=us-central2-b
#
# `./launch_tpu.sh --help` lists every option; `--dry-run` prints the commands instead of running
# them (and needs no gcloud).
#
# A preempted spot or preemptible VM: the run gets SIGTERM about 30 s before the VM goes, stops at
# its next train step or sampling shard, saves, and exits 0 ("preempted at iteration n, phase p,
# step s; rerun the same command to resume"); the mirror then copies the workdir to the bucket
# once more. Run the same 'all' command again: 'create' deletes the PREEMPTED VM and creates it
# anew, 'install' ships the checkout, and 'run' restores the workdir from the bucket and resumes
# (docs/workdir.md, "Faults").
set -euo pipefail

readonly JAX_VERSION="0.10.2"  # keep in step with setup.py
# shellcheck disable=SC2088  # the VM's shell expands the tilde
readonly VENV_PY='~/star_venv/bin/python'  # on the VM
readonly SUBCOMMANDS="create install run status fetch delete all"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REPO

usage() {
  cat <<EOF
Usage: ./launch_tpu.sh SUBCOMMAND --name=NAME --zone=ZONE [options]

Subcommands:
  create    create the TPU VM, or reuse it if 'gcloud compute tpus tpu-vm describe' finds it
            (a PREEMPTED or TERMINATED spot/preemptible VM is deleted and created again)
  install   copy this checkout (git-tracked and untracked, not ignored, files as they are on
            disk) to every worker and pip-install it with "jax[tpu]==${JAX_VERSION}" into
            ~/star_venv (Python >= 3.11; installed with apt if the image lacks it)
  run       start 'python -m star_jax.main --config=CONFIG --workdir=WORKDIR EXTRA...' on every
            worker under nohup (log: ~/star_run.log on each worker); refuses to start a second run
  status    whether the run is still going on worker 0, and the end of its log
  fetch     copy the results to DEST: 'gsutil -m cp -r' for a gs:// WORKDIR, else
            'gcloud compute tpus tpu-vm scp' from worker 0 (the workdir and star_run.log)
  delete    delete the TPU VM
  all       create, install, run (then use status, fetch and delete). After a preemption, the
            same 'all' command re-creates the VM and resumes the run from a gs:// WORKDIR

Options (--opt=VALUE or --opt VALUE):
  --name=NAME          TPU VM name (required)
  --zone=ZONE          zone, e.g. us-central2-b (required)
  --project=PROJECT    GCP project (default: gcloud's configured project)
  --accelerator=TYPE   accelerator type (default: v4-8)
  --runtime=VERSION    TPU software version (default: tpu-ubuntu2204-base)
  --spot               create a spot VM
  --preemptible        create a preemptible VM (not together with --spot)
  --config=FILE[:VAR]  config file in this repository (default: configs/arithmetic.py)
  --workdir=DIR        where the run writes its artifacts (required by run, fetch, all):
                         gs://BUCKET/PATH  the run writes to ~/star_runs/BUCKET/PATH on the VM,
                                           which worker 0 mirrors to the bucket every
                                           --sync-every seconds and when the run ends; 'run'
                                           first restores it from the bucket, so a run on a new
                                           VM (after preemption) resumes where it stopped;
                                           single-host VMs only (at most 8 cores/chips: v4-8,
                                           v5litepod-8, ...)
                         /abs/path         a path on the VM; on a multi-host slice a filesystem
                                           every worker mounts (NFS, gcsfuse)
                         rel/path, ~/path  relative to the VM user's home directory
  --extra="FLAGS"      more star_jax.main flags, split on whitespace; may be repeated
                       (e.g. --extra="--config.star.iterations=3 --overwrite")
  --sync-every=SECS    seconds between mirrors of a gs:// workdir (default: 300)
  --dest=DIR           local directory 'fetch' copies into (default: ./results)
  --dry-run            print every command (prefixed with '+ ') instead of running it
  -h, --help           this help
EOF
}

die_usage() {
  printf 'launch_tpu.sh: error: %s\n' "$1" >&2
  printf "Run './launch_tpu.sh --help' for usage.\n" >&2
  exit 2
}

die() {
  printf 'launch_tpu.sh: error: %s\n' "$1" >&2
  exit 1
}

info() {
  if ((DRY_RUN)); then
    printf '# %s\n' "$1"
  else
    printf 'launch_tpu.sh: %s\n' "$1" >&2
  fi
}

# An argument as a POSIX shell reads it back: bare when that is safe, else in single quotes
# (--opt='value' for options).
quote_arg() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s =~ ^(--[A-Za-z0-9._-]+=)(.*)$ ]]; then
    s=${BASH_REMATCH[2]}
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${s//\'/$q}"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# Prints a command, '+ ' first: to stdout in a dry run, else to stderr (so that $(runcmd ...)
# captures only the command's own output).
show_cmd() {
  local line="+" a
  for a in "$@"; do
    line+=" $(quote_arg "$a")"
  done
  if ((DRY_RUN)); then
    printf '%s\n' "$line"
  else
    printf '%s\n' "$line" >&2
  fi
}

# Prints the command; runs it unless --dry-run.
runcmd() {
  show_cmd "$@"
  if ((!DRY_RUN)); then
    "$@"
  fi
}

# ---------------------------------------------------------------------------------------------
# Arguments.

SUBCOMMAND=""
NAME=""
ZONE=""
PROJECT=""
ACCELERATOR="v4-8"
RUNTIME="tpu-ubuntu2204-base"
CONFIG="configs/arithmetic.py"
WORKDIR=""
DEST="./results"
SYNC_EVERY="300"
CAPACITY=""
DRY_RUN=0
EXTRA=()

set_option() {
  local opt=$1 value=$2 words w
  case $opt in
    --name) NAME=$value ;;
    --zone) ZONE=$value ;;
    --project) PROJECT=$value ;;
    --accelerator) ACCELERATOR=$value ;;
    --runtime) RUNTIME=$value ;;
    --config) CONFIG=$value ;;
    --workdir) WORKDIR=$value ;;
    --dest) DEST=$value ;;
    --sync-every) SYNC_EVERY=$value ;;
    --extra)
      read -r -a words <<<"$value" || true
      for w in ${words[@]+"${words[@]}"}; do
        EXTRA+=("$w")
      done
      ;;
  esac
}

parse_args() {
  local arg
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help)
        usage
        exit 0
        ;;
      --dry-run) DRY_RUN=1 ;;
      --spot | --preemptible)
        if [[ -n $CAPACITY && $CAPACITY != "$arg" ]]; then
          die_usage "--spot and --preemptible exclude each other"
        fi
        CAPACITY=$arg
        ;;
      --name=* | --zone=* | --project=* | --accelerator=* | --runtime=* | --config=* | \
        --workdir=* | --dest=* | --sync-every=* | --extra=*)
        set_option "${arg%%=*}" "${arg#*=}"
        ;;
      --name | --zone | --project | --accelerator | --runtime | --config | --workdir | --dest | \
        --sync-every | --extra)
        if (($# == 0)) || [[ $arg != --extra && $1 == --* ]]; then
          die_usage "$arg needs a value ($arg=VALUE)"
        fi
        set_option "$arg" "$1"
        shift
        ;;
      -*) die_usage "unknown option: $arg" ;;
      *)
        [[ -z $SUBCOMMAND ]] || die_usage "more than one subcommand: '$SUBCOMMAND' and '$arg'"
        SUBCOMMAND=$arg
        ;;
    esac
  done
}

# Remote-side paths of the workdir: WD_SHELL for the VM's shell, WD_SCP for scp (relative paths
# are relative to the home directory), GS_URL for a gs:// workdir.
WD_SHELL=""
WD_SCP=""
GS_URL=""
MULTIHOST_WARNING=""

validate() {
  [[ -n $SUBCOMMAND ]] || die_usage "missing subcommand (one of: ${SUBCOMMANDS// /, })"
  [[ " $SUBCOMMANDS " == *" $SUBCOMMAND "* ]] ||
    die_usage "unknown subcommand '$SUBCOMMAND' (one of: ${SUBCOMMANDS// /, })"
  [[ -n $NAME ]] || die_usage "missing --name=NAME (the TPU VM's name)"
  [[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die_usage "--name='$NAME': use lower-case letters, digits and '-', starting with a letter"
  [[ -n $ZONE ]] || die_usage "missing --zone=ZONE (e.g. us-central2-b)"
  [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] ||
    die_usage "--zone='$ZONE' is not a zone name (e.g. us-central2-b)"
  [[ -z $PROJECT || $PROJECT =~ ^[a-z][-a-z0-9.:]*$ ]] ||
    die_usage "--project='$PROJECT' is not a project id"
  [[ $ACCELERATOR =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
    die_usage "--accelerator='$ACCELERATOR' is not an accelerator type (e.g. v4-8, v5litepod-8)"
  [[ $RUNTIME =~ ^[A-Za-z0-9._-]+$ ]] ||
    die_usage "--runtime='$RUNTIME' is not a TPU software version (e.g. tpu-ubuntu2204-base)"
  [[ $SYNC_EVERY =~ ^[0-9]+$ && $SYNC_EVERY -ge 10 ]] ||
    die_usage "--sync-every='$SYNC_EVERY': a number of seconds, at least 10"
  [[ -n $DEST ]] || die_usage "--dest must not be empty"
  local w
  for w in ${EXTRA[@]+"${EXTRA[@]}"}; do
    [[ $w == --* ]] ||
      die_usage "--extra: '$w' is not a flag (star_jax.main takes --config.KEY=VALUE, --overwrite)"
    case $w in
      --config | --config=* | --workdir | --workdir=*)
        die_usage "--extra: pass '${w%%=*}' as this script's own option, not in --extra" ;;
    esac
  done
  case $SUBCOMMAND in
    run | all)
      [[ $CONFIG =~ ^[A-Za-z0-9._/-]+(:[A-Za-z0-9._-]*)?$ && $CONFIG != /* ]] ||
        die_usage "--config='$CONFIG': a path relative to the repository, e.g. configs/arithmetic.py[:smoke]"
      [[ -f "$REPO/${CONFIG%%:*}" ]] ||
        die_usage "--config='$CONFIG': no file ${CONFIG%%:*} in $REPO"
      ;;
  esac
  case $SUBCOMMAND in
    run | fetch | all)
      [[ -n $WORKDIR ]] || die_usage "missing --workdir=DIR (gs://BUCKET/PATH or a path on the VM)"
      ;;
  esac
  if [[ -n $WORKDIR ]]; then
    local rel
    if [[ $WORKDIR == gs://* ]]; then
      [[ $WORKDIR =~ ^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/[A-Za-z0-9._=+@,-]+)+/?$ ]] ||
        die_usage "--workdir='$WORKDIR': use gs://BUCKET/PATH with letters, digits and ._=+@,- in PATH"
      GS_URL=${WORKDIR%/}
      rel="star_runs/${GS_URL#gs://}"
    else
      [[ $WORKDIR =~ ^(~|~/)?[A-Za-z0-9._/=+@,-]+$ && $WORKDIR != *://* ]] ||
        die_usage "--workdir='$WORKDIR': use gs://BUCKET/PATH or a path of letters, digits and ._/=+@,-"
      rel=${WORKDIR#\~}
      rel=${rel#/}
      rel=${rel#./}
    fi
    if [[ $WORKDIR == /* ]]; then
      WD_SHELL=${WORKDIR%/}
      WD_SCP=${WORKDIR%/}
    else
      rel=${rel%/}
      [[ -n $rel && $rel != . ]] || die_usage "--workdir='$WORKDIR' would be the home directory itself"
      WD_SHELL="\"\$HOME\"/$rel"
      WD_SCP=$rel
    fi
  fi
  # More than 8 cores/chips means more than one worker (v4-16, v5litepod-16, ...): every worker
  # runs a process of the same job and needs the same workdir.
  if [[ $SUBCOMMAND == run || $SUBCOMMAND == all ]] && ((10#${ACCELERATOR##*-} > 8)); then
    [[ -z $GS_URL ]] || die_usage "--workdir=gs://... is mirrored from worker 0's own disk, which \
suits single-host TPU VMs only; a multi-host slice ($ACCELERATOR) needs a filesystem that every \
worker mounts at the same path (NFS, gcsfuse): pass --workdir=/that/mount/run"
    MULTIHOST_WARNING="warning: $ACCELERATOR has several workers; --workdir=$WORKDIR must be on a \
filesystem they all share (NFS, gcsfuse), else checkpoints and resuming break"
  fi
}

# ---------------------------------------------------------------------------------------------
# Subcommands.

GFLAGS=()  # --zone and --project for every gcloud command

gcloud_tpu() {
  runcmd gcloud compute tpus tpu-vm "$@" "${GFLAGS[@]}"
}

create_vm() {
  local args=(create "$NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME")
  if [[ -n $CAPACITY ]]; then
    args+=("$CAPACITY")
  fi
  gcloud_tpu "${args[@]}"
}

do_create() {
  local describe=(describe "$NAME" --format='value(state,acceleratorType)') out state accel
  if ((DRY_RUN)); then
    gcloud_tpu "${describe[@]}"
    info "create only when 'describe' fails (no VM named $NAME); a VM that exists is reused (a PREEMPTED or TERMINATED one is deleted and created again):"
    create_vm
    return
  fi
  show_cmd gcloud compute tpus tpu-vm "${describe[@]}" "${GFLAGS[@]}"
  if ! out=$(gcloud compute tpus tpu-vm "${describe[@]}" "${GFLAGS[@]}" 2>/dev/null); then
    info "no TPU VM named $NAME in $ZONE: creating it"
    create_vm
    return
  fi
  read -r state accel <<<"$out" || true
  case $state in
    PREEMPTED | TERMINATED)
      info "TPU VM $NAME is $state (spot and preemptible VMs cannot restart): deleting and recreating it"
      gcloud_tpu delete "$NAME" --quiet
      create_vm
      ;;
    STOPPED)
      info "TPU VM $NAME is STOPPED: starting it"
      gcloud_tpu start "$NAME"
      ;;
    DELETING) die "TPU VM $NAME is being deleted; try again when that is done" ;;
    *)
      info "reusing the existing TPU VM $NAME (state ${state:-unknown}, ${accel:-unknown accelerator})"
      if [[ -n $accel && $accel != "$ACCELERATOR" ]]; then
        info "warning: it is a $accel, not the requested $ACCELERATOR (delete it to change that)"
      fi
      ;;
  esac
}

# Joins shell snippets into one command line for the VM's shell.
join_steps() {
  local out=$1
  shift
  while (($#)); do
    out+="; $1"
    shift
  done
  printf '%s' "$out"
}

# Refuses to go on while a run is going on this worker (remote shell snippet).
# shellcheck disable=SC2016  # the VM's shell expands these
readonly REMOTE_BUSY_CHECK='if [ -f ~/star_run.pid ] && kill -0 "$(cat ~/star_run.pid)" 2>/dev/null; then echo "$(hostname): a run is still going (pid $(cat ~/star_run.pid), log ~/star_run.log)" >&2; exit 1; fi'

# shellcheck disable=SC2016  # the VM's shell expands these
remote_install_command() {
  local py_ok='-c "import sys; sys.exit(sys.version_info < (3, 11))"'
  local apt='sudo env DEBIAN_FRONTEND=noninteractive apt-get'
  local steps=(
    "set -eu"
    "$REMOTE_BUSY_CHECK"
    "rm -rf ~/star_jax.new"
    "mkdir -p ~/star_jax.new"
    "tar -xzf ~/star_jax.tar.gz -C ~/star_jax.new"
    "rm -rf ~/star_jax ~/star_jax.tar.gz"
    "mv ~/star_jax.new ~/star_jax"
    'PY=""'
    "for c in python3.13 python3.12 python3.11 python3; do if command -v \"\$c\" >/dev/null 2>&1 && \"\$c\" $py_ok; then PY=\$c; break; fi; done"
    "if [ -z \"\$PY\" ]; then $apt update -qq && $apt install -y -qq python3.11 python3.11-venv; PY=python3.11; fi"
    "if ! $VENV_PY $py_ok 2>/dev/null; then rm -rf ~/star_venv; \"\$PY\" -m venv ~/star_venv || { rm -rf ~/star_venv; $apt install -y -qq \"\$PY-venv\"; \"\$PY\" -m venv ~/star_venv; }; fi"
    "$VENV_PY -m pip install -q --upgrade pip"
    "$VENV_PY -m pip install -q -e ~/star_jax \"jax[tpu]==$JAX_VERSION\""
    "$VENV_PY -c \"import jax, star_jax; print(jax.__version__)\" | sed \"s/^/\$(hostname): star_jax installed, jax /\""
  )
  join_steps "${steps[@]}"
}

do_install() {
  local tarball files=() f
  if ((DRY_RUN)); then
    tarball="${TMPDIR:-/tmp}/star_jax_src.XXXXXX/star_jax.tar.gz"
    printf '+ tar -czf %s -C %s <the files of: git -C %s ls-files --cached --others --exclude-standard>\n' \
      "$(quote_arg "$tarball")" "$(quote_arg "$REPO")" "$(quote_arg "$REPO")"
  else
    command -v git >/dev/null || die "git not found (needed to list the files to copy)"
    git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
      die "$REPO is not a git checkout (install copies the files git tracks or would track)"
    TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/star_jax_src.XXXXXX")
    tarball="$TMP_DIR/star_jax.tar.gz"
    while IFS= read -r -d '' f; do
      if [[ -e "$REPO/$f" || -L "$REPO/$f" ]]; then
        files+=("$f")
      fi
    done < <(git -C "$REPO" ls-files -z --cached --others --exclude-standard)
    ((${#files[@]})) || die "git lists no files in $REPO"
    printf '+ tar -czf %s -C %s <%d files of: git ls-files --cached --others --exclude-standard>\n' \
      "$(quote_arg "$tarball")" "$(quote_arg "$REPO")" "${#files[@]}" >&2
    tar -czf "$tarball" -C "$REPO" -- "${files[@]}"
  fi
  gcloud_tpu scp "$tarball" "$NAME:star_jax.tar.gz" --worker=all
  gcloud_tpu ssh "$NAME" --worker=all --command="$(remote_install_command)"
}

# shellcheck disable=SC2016  # the VM's shell expands these
remote_run_command() {
  local main=("$VENV_PY" -m star_jax.main "--config=$(quote_arg "$CONFIG")"
              "--workdir=$WD_SHELL")
  local w
  for w in ${EXTRA[@]+"${EXTRA[@]}"}; do
    main+=("$(quote_arg "$w")")
  done
  local steps=(
    "set -eu"
    "$REMOTE_BUSY_CHECK"
    "if [ ! -x $VENV_PY ] || [ ! -d ~/star_jax ]; then echo \"\$(hostname): star_jax is not installed (./launch_tpu.sh install)\" >&2; exit 1; fi"
    "cd ~/star_jax"
  )
  if [[ -n $GS_URL ]]; then
    steps+=(
      "mkdir -p $WD_SHELL"
      "if [ ! -e $WD_SHELL/config.json ] && gsutil -q ls $GS_URL >/dev/null 2>&1; then echo \"\$(hostname): restoring $GS_URL\"; gsutil -m -q rsync -r $GS_URL $WD_SHELL; fi"
    )
  fi
  steps+=(
    "nohup ${main[*]} > ~/star_run.log 2>&1 < /dev/null & echo \$! > ~/star_run.pid"
    'echo "$(hostname): started pid $(cat ~/star_run.pid), log ~/star_run.log"'
  )
  join_steps "${steps[@]}"
}

# shellcheck disable=SC2016  # the VM's shell expands these
remote_sync_command() {
  printf '%s' "nohup bash ~/star_jax/launch_tpu.sh _sync \"\$(cat ~/star_run.pid)\" $WD_SHELL $GS_URL $SYNC_EVERY > ~/star_sync.log 2>&1 < /dev/null & echo \"\$(hostname): mirroring $WD_SHELL to $GS_URL every ${SYNC_EVERY}s (log ~/star_sync.log)\""
}

do_run() {
  gcloud_tpu ssh "$NAME" --worker=all --command="$(remote_run_command)"
  if [[ -n $GS_URL ]]; then
    gcloud_tpu ssh "$NAME" --worker=0 --command="$(remote_sync_command)"
  fi
}

# shellcheck disable=SC2016  # the VM's shell expands these
do_status() {
  gcloud_tpu ssh "$NAME" --worker=0 --command='if [ -f ~/star_run.pid ] && kill -0 "$(cat ~/star_run.pid)" 2>/dev/null; then echo "$(hostname): running (pid $(cat ~/star_run.pid))"; else echo "$(hostname): not running"; fi; tail -n 30 ~/star_run.log 2>/dev/null || echo "no ~/star_run.log yet"; tail -n 3 ~/star_sync.log 2>/dev/null || true'
}

do_fetch() {
  runcmd mkdir -p "$DEST"
  if [[ -n $GS_URL ]]; then
    runcmd gsutil -m cp -r "$GS_URL" "$DEST/"
  else
    gcloud_tpu scp --recurse "$NAME:$WD_SCP" "$DEST/" --worker=0
    gcloud_tpu scp "$NAME:star_run.log" "$DEST/" --worker=0
  fi
}

do_delete() {
  gcloud_tpu delete "$NAME" --quiet
}

# ---------------------------------------------------------------------------------------------
# On the VM (worker 0): mirrors the local workdir to the bucket while the run's process lives,
# then once more. metrics.jsonl (which lists the finished iterations) is snapshotted before and
# uploaded after everything else, so the bucket never claims an iteration whose files it lacks.

sync_once() {
  local dir=$1 url=$2 snap
  snap=$(mktemp)
  if [[ -f "$dir/metrics.jsonl" ]]; then
    cp "$dir/metrics.jsonl" "$snap"
  else
    rm -f "$snap"
  fi
  gsutil -m -q rsync -r -d -x '^metrics\.jsonl$' "$dir" "$url" || return 1
  if [[ -f $snap ]]; then
    gsutil -q cp "$snap" "$url/metrics.jsonl" || return 1
    rm -f "$snap"
  else
    gsutil -q rm "$url/metrics.jsonl" >/dev/null 2>&1 || true
  fi
}

remote_sync() {
  (($# == 4)) || die "usage: launch_tpu.sh _sync PID DIR gs://URL SECONDS"
  local pid=$1 dir=$2 url=$3 every=$4 waited=0 try
  echo "$(date -u +%FT%TZ) mirroring $dir to $url every ${every}s while pid $pid runs"
  # A preemption notice reaches this process too: keep going, for the final sync once the run
  # has saved and exited (within seconds).
  trap 'echo "$(date -u +%FT%TZ) SIGTERM: the final sync follows when pid $pid exits"' TERM
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2 &
    wait $! || true # (a trapped signal interrupts the wait, not the loop)
    waited=$((waited + 2))
    if ((waited >= every)); then
      sync_once "$dir" "$url" || echo "$(date -u +%FT%TZ) sync failed; trying again later"
      waited=0
    fi
  done
  for try in 1 2 3 4 5; do
    if sync_once "$dir" "$url"; then
      echo "$(date -u +%FT%TZ) run ended; final sync to $url done"
      return 0
    fi
    echo "$(date -u +%FT%TZ) final sync failed (try $try); retrying"
    sleep 30
  done
  die "final sync to $url failed"
}

# ---------------------------------------------------------------------------------------------

main() {
  if [[ ${1:-} == _sync ]]; then
    shift
    remote_sync "$@"
    return
  fi
  parse_args "$@"
  validate
  GFLAGS=(--zone="$ZONE")
  if [[ -n $PROJECT ]]; then
    GFLAGS+=(--project="$PROJECT")
  fi
  if ((!DRY_RUN)); then
    command -v gcloud >/dev/null ||
      die "gcloud not found: install the Google Cloud SDK (https://cloud.google.com/sdk)"
    if [[ $SUBCOMMAND == fetch && -n $GS_URL ]]; then
      command -v gsutil >/dev/null || die "gsutil not found (part of the Google Cloud SDK)"
    fi
  fi
  if [[ -n $MULTIHOST_WARNING ]]; then
    info "$MULTIHOST_WARNING"
  fi
  case $SUBCOMMAND in
    create) do_create ;;
    install) do_install ;;
    run) do_run ;;
    status) do_status ;;
    fetch) do_fetch ;;
    delete) do_delete ;;
    all)
      do_create
      do_install
      do_run
      info "next, watch it:  ./launch_tpu.sh status --name=$NAME --zone=$ZONE"
      info "get the results: ./launch_tpu.sh fetch --name=$NAME --zone=$ZONE --workdir=$WORKDIR"
      info "when done:       ./launch_tpu.sh delete --name=$NAME --zone=$ZONE"
      ;;
  esac
}

TMP_DIR=""
cleanup() {
  if [[ -n $TMP_DIR ]]; then
    rm -rf "$TMP_DIR"
  fi
}
trap cleanup EXIT

main "$@"
