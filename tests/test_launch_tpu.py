"""launch_tpu.sh: the commands of its dry run, its argument errors, and (with fake gcloud/gsutil on
PATH) what its real paths run, including the command lines it sends to the TPU VM's shell."""

import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch_tpu.sh")
BASE = ["--name=star", "--zone=us-central2-b"]
EXAMPLE = ["all", *BASE, "--accelerator=v4-8", "--runtime=tpu-ubuntu2204-base",
           "--config=configs/arithmetic.py", "--workdir=gs://my-bucket/run1", "--spot"]
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]


def launch(*args, env=None, check=True):
  p = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=60,
                     cwd=ROOT)
  if check:
    assert p.returncode == 0, p.stderr
  return p


def dry(*args, env=None):
  """The commands a dry run prints, each as its argv."""
  p = launch(*args, "--dry-run", env=env)
  cmds = [shlex.split(line[2:]) for line in p.stdout.splitlines()
          if line.startswith("+ ") and not line.startswith("+ tar ")]
  for line in p.stdout.splitlines():  # nothing else but '+ ' commands and '# ' notes
    assert line.startswith(("+ ", "# ")), line
  return cmds, p.stdout


def flag(cmd, name):
  vals = [a.split("=", 1)[1] for a in cmd if a.startswith(name + "=")]
  assert len(vals) == 1, (name, cmd)
  return vals[0]


def tpu_cmds(cmds, verb):
  return [c for c in cmds if c[:5] == TPU + [verb]]


def check_create(cmd, capacity="--spot"):
  assert cmd[:6] == TPU + ["create", "star"]
  assert flag(cmd, "--accelerator-type") == "v4-8"
  assert flag(cmd, "--version") == "tpu-ubuntu2204-base"
  assert flag(cmd, "--zone") == "us-central2-b"
  for c in ("--spot", "--preemptible"):
    assert (c in cmd) == (c == capacity), cmd


def test_help():
  p = launch("--help")
  assert p.stdout.startswith("Usage: ./launch_tpu.sh")
  for word in ("create", "install", "run", "status", "fetch", "delete", "all", "--dry-run",
               "--spot", "--preemptible", "--extra", "--dest", "--workdir"):
    assert word in p.stdout
  assert launch("-h").stdout == p.stdout


def test_dry_run_all_example():
  cmds, out = dry(*EXAMPLE)
  assert [c[4] for c in cmds if c[0] == "gcloud"] == ["describe", "create", "scp", "ssh", "ssh",
                                                      "ssh"]
  assert all(flag(c, "--zone") == "us-central2-b" for c in cmds)
  describe, create = tpu_cmds(cmds, "describe")[0], tpu_cmds(cmds, "create")[0]
  assert describe[5] == "star"
  check_create(create)
  assert "+ tar -czf " in out and "ls-files --cached --others --exclude-standard" in out
  scp = tpu_cmds(cmds, "scp")[0]
  assert scp[6] == "star:star_jax.tar.gz" and scp[5].endswith("star_jax.tar.gz")
  assert flag(scp, "--worker") == "all"
  install, run, sync = tpu_cmds(cmds, "ssh")
  assert install[5] == "star" and flag(install, "--worker") == "all"
  assert 'pip install -q -e ~/star_jax "jax[tpu]==0.10.2"' in flag(install, "--command")
  assert flag(run, "--worker") == "all"
  remote = flag(run, "--command")
  assert ("nohup ~/star_venv/bin/python -m star_jax.main --config=configs/arithmetic.py "
          '--workdir="$HOME"/star_runs/my-bucket/run1 > ~/star_run.log 2>&1 < /dev/null &') in remote
  assert "gsutil -m -q rsync -r gs://my-bucket/run1 " in remote  # restore before resuming
  assert flag(sync, "--worker") == "0"
  assert "launch_tpu.sh _sync" in flag(sync, "--command")
  assert "gs://my-bucket/run1 300" in flag(sync, "--command")
  assert not tpu_cmds(cmds, "delete")  # 'all' leaves the VM to run
  assert "./launch_tpu.sh fetch --name=star" in out


@pytest.mark.parametrize("capacity", ["--spot", "--preemptible", None])
def test_dry_run_create(capacity):
  cmds, out = dry("create", *BASE, *([capacity] if capacity else []))
  assert [c[4] for c in cmds] == ["describe", "create"]
  check_create(cmds[1], capacity)
  assert "reused" in out


def test_dry_run_create_other_accelerator_and_project():
  cmds, _ = dry("create", *BASE, "--accelerator=v5litepod-8", "--runtime=v2-alpha-tpuv5-lite",
                "--project=my-proj")
  assert flag(cmds[1], "--accelerator-type") == "v5litepod-8"
  assert flag(cmds[1], "--version") == "v2-alpha-tpuv5-lite"
  assert all(flag(c, "--project") == "my-proj" for c in cmds)


def test_dry_run_install():
  cmds, out = dry("install", *BASE)
  assert [c[4] for c in cmds] == ["scp", "ssh"]
  assert flag(cmds[0], "--worker") == "all" and flag(cmds[1], "--worker") == "all"
  remote = flag(cmds[1], "--command")
  assert "tar -xzf ~/star_jax.tar.gz" in remote and "-m venv ~/star_venv" in remote
  assert "python3.11" in remote  # the TPU image's python3.10 is too old for jax 0.10.2


def test_dry_run_run_local_workdir_and_extra():
  cmds, _ = dry("run", *BASE, "--config=configs/arithmetic.py:smoke", "--workdir=runs/arith",
                "--extra=--config.star.iterations=3 --config.star.rationalize=False",
                "--extra", "--overwrite")
  assert len(cmds) == 1 and cmds[0][4] == "ssh" and flag(cmds[0], "--worker") == "all"
  remote = flag(cmds[0], "--command")
  assert ("python -m star_jax.main --config=configs/arithmetic.py:smoke "
          '--workdir="$HOME"/runs/arith --config.star.iterations=3 --config.star.rationalize=False '
          "--overwrite > ~/star_run.log") in remote
  assert "gsutil" not in remote


def test_dry_run_multihost_warns_about_the_workdir():
  _, out = dry("run", *BASE, "--accelerator=v5litepod-16", "--workdir=/mnt/nfs/run")
  assert "# warning: v5litepod-16 has several workers" in out
  _, out = dry("run", *BASE, "--accelerator=v5litepod-8", "--workdir=/mnt/nfs/run")
  assert "warning" not in out


def test_dry_run_status_and_delete():
  (status,), _ = dry("status", *BASE)
  assert status[4] == "ssh" and flag(status, "--worker") == "0"
  assert "star_run.log" in flag(status, "--command")
  (delete,), _ = dry("delete", *BASE)
  assert delete == TPU + ["delete", "star", "--quiet", "--zone=us-central2-b"]


def test_dry_run_fetch():
  cmds, _ = dry("fetch", *BASE, "--workdir=gs://my-bucket/run1/", "--dest=out dir")
  assert cmds == [["mkdir", "-p", "out dir"], ["gsutil", "-m", "cp", "-r", "gs://my-bucket/run1",
                                                "out dir/"]]
  cmds, _ = dry("fetch", *BASE, "--workdir=/data/run1")
  assert cmds[0] == ["mkdir", "-p", "./results"]
  assert cmds[1][:9] == TPU + ["scp", "--recurse", "star:/data/run1", "./results/", "--worker=0"]
  assert cmds[2][:8] == TPU + ["scp", "star:star_run.log", "./results/", "--worker=0"]
  cmds, _ = dry("fetch", *BASE, "--workdir=~/runs/a")
  assert "star:runs/a" in cmds[1]


def fake_bin(tmp_path, names, body):
  d = tmp_path / "bin"
  d.mkdir(exist_ok=True)
  for n in names:
    (d / n).write_text("#!/bin/bash\n" + body.replace("NAME", n))
    (d / n).chmod(0o755)
  return d


def test_dry_run_runs_nothing(tmp_path):
  """Only bash and a few coreutils on PATH; gcloud & co. would leave a mark if called."""
  marks = tmp_path / "marks"
  d = fake_bin(tmp_path, ["gcloud", "gsutil", "git", "tar", "mkdir", "ssh", "scp"],
               f'echo NAME >> {marks}\nexit 1\n')
  for tool in ("bash", "dirname", "cat"):
    os.symlink(shutil.which(tool), d / tool)
  env = {"PATH": str(d), "HOME": str(tmp_path)}
  for sub in ("all", "create", "install", "run", "status", "fetch", "delete"):
    cmds, _ = dry(sub, *BASE, "--workdir=gs://my-bucket/r", env=env)
    assert cmds
  assert not marks.exists(), marks.read_text()


@pytest.mark.parametrize("args, message", [
    ([], "missing subcommand"),
    (["launch", *BASE], "unknown subcommand 'launch'"),
    (["create", "--zone=us-central2-b"], "missing --name"),
    (["create", "--name=star"], "missing --zone"),
    (["create", *BASE, "--acelerator=v4-8"], "unknown option: --acelerator=v4-8"),
    (["create", *BASE, "--spot", "--preemptible"], "--spot and --preemptible"),
    (["create", "--name=Star_1", "--zone=us-central2-b"], "--name='Star_1'"),
    (["create", *BASE, "--accelerator=tpu8"], "--accelerator='tpu8'"),
    (["create", "install", *BASE], "more than one subcommand"),
    (["create", *BASE, "--name"], "--name needs a value"),
    (["run", *BASE], "missing --workdir"),
    (["fetch", *BASE], "missing --workdir"),
    (["run", *BASE, "--workdir=s3://b/r"], "--workdir='s3://b/r'"),
    (["run", *BASE, "--workdir=gs://b"], "--workdir='gs://b'"),
    (["run", *BASE, "--workdir=~"], "--workdir='~'"),
    (["run", *BASE, "--workdir=/tmp/r", "--config=configs/nope.py"], "no file configs/nope.py"),
    (["run", *BASE, "--workdir=/tmp/r", "--extra=iterations=3"], "is not a flag"),
    (["run", *BASE, "--workdir=/tmp/r", "--extra=--workdir=/x"], "--workdir"),
    (["run", *BASE, "--workdir=gs://my-bucket/r", "--sync-every=0"], "--sync-every"),
    (["run", *BASE, "--workdir=gs://b/r"], "--workdir='gs://b/r'"),
    (["all", *BASE, "--accelerator=v4-32", "--workdir=gs://my-bucket/r"], "multi-host slice"),
])
def test_bad_arguments(args, message):
  p = launch(*args, "--dry-run", check=False)
  assert p.returncode == 2, (p.stdout, p.stderr)
  assert message in p.stderr and "--help" in p.stderr
  assert p.stdout == ""


def test_real_run_needs_gcloud(tmp_path):
  d = tmp_path / "bin"
  d.mkdir()
  for tool in ("bash", "dirname"):
    os.symlink(shutil.which(tool), d / tool)
  p = launch("create", *BASE, env={"PATH": str(d)}, check=False)
  assert p.returncode == 1 and "gcloud not found" in p.stderr


FAKE_GCLOUD = """
printf '%s\\x1f' "$@" >> "$FAKE_LOG"; echo >> "$FAKE_LOG"
if [ "$4" = describe ]; then
  if [ -n "${FAKE_DESCRIBE:-}" ]; then printf '%b\\n' "$FAKE_DESCRIBE"; exit 0; fi
  echo "ERROR: NOT_FOUND" >&2; exit 1
fi
if [ "$4" = scp ] && [ -f "$5" ]; then cp "$5" "$FAKE_UPLOAD"; fi
exit 0
"""


def fake_gcloud_env(tmp_path, describe=None):
  d = fake_bin(tmp_path, ["gcloud"], FAKE_GCLOUD)
  env = dict(os.environ, PATH=f"{d}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "log"),
             FAKE_UPLOAD=str(tmp_path / "upload.tar.gz"))
  if describe:
    env["FAKE_DESCRIBE"] = describe
  return env


def gcloud_calls(tmp_path):
  if not (tmp_path / "log").exists():
    return []
  return [line.split("\x1f")[3:-1] for line in (tmp_path / "log").read_text().splitlines()]


@pytest.mark.parametrize("describe, verbs", [
    (None, ["describe", "create"]),
    ("READY\\tv4-8", ["describe"]),
    ("PREEMPTED\\tv4-8", ["describe", "delete", "create"]),
    ("STOPPED\\tv4-8", ["describe", "start"]),
])
def test_real_create_reuses_or_creates(tmp_path, describe, verbs):
  p = launch("create", *BASE, "--spot", env=fake_gcloud_env(tmp_path, describe))
  calls = gcloud_calls(tmp_path)
  assert [c[0] for c in calls] == verbs
  if "create" in verbs:
    check_create(["gcloud", "compute", "tpus", "tpu-vm", *calls[-1]])
  if verbs == ["describe"]:
    assert "reusing the existing TPU VM star" in p.stderr
  # The real run prints the same commands as the dry run.
  assert [c for c in p.stderr.splitlines() if c.startswith("+ ")][0] == \
      dry("create", *BASE, "--spot")[1].splitlines()[0]


def test_real_install_ships_the_working_tree(tmp_path):
  if subprocess.run(["git", "-C", ROOT, "rev-parse"], capture_output=True).returncode:
    pytest.skip("not a git checkout")
  launch("install", *BASE, env=fake_gcloud_env(tmp_path))
  assert [c[0] for c in gcloud_calls(tmp_path)] == ["scp", "ssh"]
  with tarfile.open(tmp_path / "upload.tar.gz") as t:
    names = set(t.getnames())
  assert {"launch_tpu.sh", "setup.py", "star_jax/main.py", "configs/arithmetic.py"} <= names
  assert not any(n.startswith((".git/", ".venv/", ".pytest_cache/")) or "__pycache__" in n
                 for n in names)


def remote_command(*args):
  (cmd,) = [c for c in dry(*args)[0] if c[4] == "ssh" and flag(c, "--worker") == "all"]
  return flag(cmd, "--command")


FAKE_PYTHON = """
printf '%s\\n' "$PWD" "$@" > "$HOME/argv"
exec sleep "${FAKE_SLEEP:-0}"
"""

FAKE_GSUTIL = """
printf '%s\\x1f' "$@" >> "$HOME/gsutil.log"; echo >> "$HOME/gsutil.log"
case "$*" in
  *" ls "*) [ -n "${FAKE_BUCKET:-}" ] ;;
  *" cp "*) cp "$3" "$HOME/uploaded_metrics" ;;
esac
"""


def vm_home(tmp_path):
  """A stand-in for the VM's home: ~/star_jax, a fake ~/star_venv/bin/python and gsutil."""
  home = tmp_path / "home"
  (home / "star_jax").mkdir(parents=True)
  (home / "star_venv" / "bin").mkdir(parents=True)
  py = home / "star_venv" / "bin" / "python"
  py.write_text("#!/bin/bash\n" + FAKE_PYTHON)
  py.chmod(0o755)
  d = fake_bin(tmp_path, ["gsutil"], FAKE_GSUTIL)
  return home, dict(os.environ, HOME=str(home), PATH=f"{d}:{os.environ['PATH']}")


def wait_for(path, timeout=10):
  end = time.time() + timeout
  while not path.exists() or not path.read_text():
    assert time.time() < end, f"{path} never appeared"
    time.sleep(0.05)


def test_remote_run_command_in_a_shell(tmp_path):
  """The run command, executed by bash as the VM would: argv, nohup, pid file, busy check."""
  home, env = vm_home(tmp_path)
  extra = "--config.star.iterations=3 --config.model.overrides={'a':1}"
  cmd = remote_command("run", *BASE, "--config=configs/arithmetic.py:smoke",
                       "--workdir=runs/arith", f"--extra={extra}", "--extra=--overwrite")
  env["FAKE_SLEEP"] = "30"
  p = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  wait_for(home / "argv")
  pid = int((home / "star_run.pid").read_text())
  try:
    assert (home / "argv").read_text().splitlines() == [
        str(home / "star_jax"), "-m", "star_jax.main", "--config=configs/arithmetic.py:smoke",
        f"--workdir={home}/runs/arith", "--config.star.iterations=3",
        "--config.model.overrides={'a':1}", "--overwrite"]
    assert "started pid" in p.stdout and (home / "star_run.log").exists()
    again = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 1 and "a run is still going" in again.stderr
  finally:
    os.kill(pid, signal.SIGTERM)


FAKE_SYSTEM_PYTHON = """
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; cp "$FAKE_VENV_PY" "$3/bin/python"; fi
"""

FAKE_VENV_PYTHON = """
printf '%s\\x1f' "$@" >> "$HOME/venv_calls"; echo >> "$HOME/venv_calls"
case "$*" in *"import jax"*) echo 0.10.2 ;; esac
"""


def test_remote_install_command_in_a_shell(tmp_path):
  """The install command, executed by bash as the VM would (python3.13 stands in for the apt
  one): fresh ~/star_jax from the tarball, a venv, pip install -e with jax[tpu]."""
  home = tmp_path / "home"
  (home / "star_jax").mkdir(parents=True)
  (home / "star_jax" / "stale.py").write_text("")
  src = tmp_path / "src"
  (src / "star_jax").mkdir(parents=True)
  (src / "star_jax" / "main.py").write_text("")
  with tarfile.open(home / "star_jax.tar.gz", "w:gz") as t:
    t.add(src / "star_jax", arcname="star_jax")
  venv_py = tmp_path / "venv_python"
  venv_py.write_text("#!/bin/bash\n" + FAKE_VENV_PYTHON)
  venv_py.chmod(0o755)
  d = fake_bin(tmp_path, ["python3.13"], FAKE_SYSTEM_PYTHON)
  env = dict(os.environ, HOME=str(home), PATH=f"{d}:{os.environ['PATH']}",
             FAKE_VENV_PY=str(venv_py))
  (cmd,) = [flag(c, "--command") for c in dry("install", *BASE)[0] if c[4] == "ssh"]
  p = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  assert "star_jax installed, jax 0.10.2" in p.stdout
  assert sorted(os.listdir(home / "star_jax")) == ["star_jax"]  # stale.py is gone
  assert not (home / "star_jax.tar.gz").exists()
  calls = [line.split("\x1f")[:-1] for line in (home / "venv_calls").read_text().splitlines()]
  assert ["-m", "pip", "install", "-q", "-e", str(home / "star_jax"), "jax[tpu]==0.10.2"] in calls


@pytest.mark.parametrize("bucket_has_run", [False, True])
def test_remote_run_command_restores_from_gcs(tmp_path, bucket_has_run):
  home, env = vm_home(tmp_path)
  if bucket_has_run:
    env["FAKE_BUCKET"] = "1"
  cmd = remote_command("run", *BASE, "--workdir=gs://my-bucket/run1")
  p = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  wait_for(home / "argv")
  local = home / "star_runs" / "my-bucket" / "run1"
  assert f"--workdir={local}" in (home / "argv").read_text().splitlines()
  assert local.is_dir()
  calls = [line.split("\x1f")[:-1] for line in (home / "gsutil.log").read_text().splitlines()]
  assert calls[0] == ["-q", "ls", "gs://my-bucket/run1"]
  if bucket_has_run:
    assert calls[1] == ["-m", "-q", "rsync", "-r", "gs://my-bucket/run1", str(local)]
  else:
    assert len(calls) == 1


@pytest.mark.parametrize("with_metrics", [True, False])
def test_remote_sync_mirrors_metrics_last(tmp_path, with_metrics):
  """`_sync` (run on worker 0) after the run's process is gone: one final mirror, with
  metrics.jsonl uploaded after everything else."""
  home, env = vm_home(tmp_path)
  run = tmp_path / "run"
  run.mkdir()
  if with_metrics:
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n')
  dead = subprocess.Popen(["true"])
  dead.wait()
  p = subprocess.run(["bash", SCRIPT, "_sync", str(dead.pid), str(run), "gs://b/r", "60"], env=env,
                     capture_output=True, text=True, timeout=30)
  assert p.returncode == 0, p.stderr
  assert "final sync to gs://b/r done" in p.stdout
  calls = [line.split("\x1f")[:-1] for line in (home / "gsutil.log").read_text().splitlines()]
  assert calls[0] == ["-m", "-q", "rsync", "-r", "-d", "-x", r"^metrics\.jsonl$", str(run),
                      "gs://b/r"]
  if with_metrics:
    assert calls[1][:2] == ["-q", "cp"] and calls[1][3] == "gs://b/r/metrics.jsonl"
    assert (home / "uploaded_metrics").read_text() == '{"iteration": 0}\n'
  else:
    assert calls[1] == ["-q", "rm", "gs://b/r/metrics.jsonl"]


def test_remote_sync_outlives_the_preemption_notice_for_its_final_sync(tmp_path):
  """A preempted VM sends SIGTERM to every process: the mirror waits for the run to save and
  exit, then syncs once more."""
  home, env = vm_home(tmp_path)
  run = tmp_path / "run"
  run.mkdir()
  (run / "metrics.jsonl").write_text('{"iteration": 0}\n')
  star = subprocess.Popen(["sleep", "3"])  # the run: saves and exits a few seconds later
  sync = subprocess.Popen(["bash", SCRIPT, "_sync", str(star.pid), str(run), "gs://b/r", "600"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(1)
  sync.send_signal(signal.SIGTERM)
  star.wait()
  out, err = sync.communicate(timeout=30)
  assert sync.returncode == 0, err
  assert "SIGTERM: the final sync follows" in out and "final sync to gs://b/r done" in out
  assert (home / "uploaded_metrics").read_text() == '{"iteration": 0}\n'


def test_shellcheck_clean():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
  p = subprocess.run(["shellcheck", SCRIPT], capture_output=True, text=True)
  assert p.returncode == 0, p.stdout + p.stderr
