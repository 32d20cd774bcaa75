"""The workdir's lock under races: a takeover by two launchers at once, a holder whose lock was
taken over while it was paused, the gs:// lock's preconditions."""

import json
import multiprocessing
import os
import subprocess
import time

import pytest

from star_jax.experiment import lock as lock_lib
from star_jax.runtime import distributed, lockfile


def _dead_pid() -> int:
  gone = subprocess.Popen(["true"])
  gone.wait()
  return gone.pid


def _stale_record(pid: int) -> dict:
  return dict(distributed.this_process(), pid=pid, started=time.time() - 100,
              heartbeat=time.time() - 100, token="stale")


def _racer(workdir, barrier, results, rounds):
  """A launcher that tries to take the stale lock each round (a process of its own)."""
  for _ in range(rounds):
    barrier.wait()  # the stale lock is in place
    held = lock_lib.WorkdirLock(workdir)
    try:
      held._acquire()  # pylint: disable=protected-access  (acquire = this + the multi-host vote)
      results.put(held.token)
    except lock_lib.WorkdirLockedError:
      results.put(None)
    barrier.wait()  # the parent has read the lock
    held.release()
    barrier.wait()  # released: the parent writes the next stale lock


def test_two_launchers_racing_for_one_stale_lock_never_both_win(tmp_path):
  """Both find a dead process's lock; exactly one takes it, and the lock is the winner's."""
  rounds = 60
  ctx = multiprocessing.get_context("spawn")
  barrier, results = ctx.Barrier(3), ctx.Queue()
  racers = [ctx.Process(target=_racer, args=(str(tmp_path), barrier, results, rounds))
            for _ in range(2)]
  for p in racers:
    p.start()
  path = tmp_path / lock_lib.LOCK_NAME
  pid = _dead_pid()
  try:
    for r in range(rounds):
      path.write_text(json.dumps(_stale_record(pid)))
      barrier.wait(timeout=120)
      tokens = [results.get(timeout=120) for _ in racers]
      winners = [t for t in tokens if t is not None]
      assert len(winners) == 1, (r, tokens)
      assert json.loads(path.read_text())["token"] == winners[0], r
      barrier.wait(timeout=120)
      barrier.wait(timeout=120)
      assert not path.exists(), r  # the winner released it; the loser removed nothing
      assert sorted(os.listdir(tmp_path)) == [], os.listdir(tmp_path)  # nothing left aside
  finally:
    for p in racers:
      p.join(timeout=60)
      if p.is_alive():
        p.kill()


def _take_over_by_hand(path, host="tpu-vm-7", pid=4242) -> dict:
  """Another run's takeover as it lands on disk: a new file (another inode) renamed in."""
  record = dict(host=host, pid=pid, boot_id="", started=time.time(), heartbeat=time.time(),
                token="theirs")
  tmp = path.parent / "theirs.tmp"
  tmp.write_text(json.dumps(record))
  os.replace(tmp, path)
  return record


def test_a_run_whose_lock_was_taken_over_stops_at_its_next_safe_point_writing_nothing(
    tmp_path, monkeypatch):
  monkeypatch.setattr(lock_lib, "HEARTBEAT_SECONDS", 0.05)
  path = tmp_path / lock_lib.LOCK_NAME
  with distributed.preemption_handling():
    held = lock_lib.WorkdirLock(tmp_path)
    held.acquire()
    time.sleep(0.2)  # a few beats of its own
    assert json.loads(path.read_text())["token"] == held.token
    theirs = _take_over_by_hand(path)
    deadline = time.time() + 10
    while not held.lost and time.time() < deadline:
      time.sleep(0.02)
    time.sleep(0.3)  # beats that would claim it back
    assert json.loads(path.read_text()) == theirs  # never written again
    saved = []
    with pytest.raises(distributed.StopRun) as stop:
      distributed.safe_point("iter 1 train", 3, 8, save=lambda: saved.append(1))
    assert saved == []  # nothing saved on the way out
    line = str(stop.value)
    assert "\n" not in line and line.startswith(
        f"workdir {tmp_path} was taken over by pid 4242 on host tpu-vm-7 while this run")
    held.release()
  assert json.loads(path.read_text()) == theirs  # its release leaves the new holder's lock


def test_the_release_of_a_lock_taken_over_leaves_the_new_holders_lock(tmp_path):
  held = lock_lib.WorkdirLock(tmp_path)
  held.acquire()
  theirs = _take_over_by_hand(tmp_path / lock_lib.LOCK_NAME)
  held.release()
  assert json.loads((tmp_path / lock_lib.LOCK_NAME).read_text()) == theirs
  assert os.listdir(tmp_path) == [lock_lib.LOCK_NAME]  # nothing left aside


# --- gs:// ---------------------------------------------------------------------------------


class _PreconditionFailed(Exception):
  code = 412


class _Bucket:
  """google-cloud-storage's blob calls the lock makes, on an in-memory bucket that honours
  ``if_generation_match`` as GCS does (0: only if absent)."""

  def __init__(self):
    self.objects: dict[str, tuple[int, bytes]] = {}
    self.generation = 0

  def bucket(self, name):
    del name
    return self

  def blob(self, name):
    return _Blob(self, name)

  def get_blob(self, name):
    if name not in self.objects:
      return None
    blob = _Blob(self, name)
    blob.generation = self.objects[name][0]
    return blob


class _Blob:

  def __init__(self, bucket, name):
    self.bucket, self.name, self.generation = bucket, name, None

  def _check(self, if_generation_match):
    now = self.bucket.objects.get(self.name, (0, b""))[0]
    if if_generation_match is not None and if_generation_match != now:
      raise _PreconditionFailed(f"412 precondition failed: {now} != {if_generation_match}")

  def upload_from_string(self, text, if_generation_match=None):
    self._check(if_generation_match)
    self.bucket.generation += 1
    self.bucket.objects[self.name] = (self.bucket.generation, text.encode())

  def download_as_bytes(self, if_generation_match=None):
    self._check(if_generation_match)
    return self.bucket.objects[self.name][1]

  def delete(self, if_generation_match=None):
    self._check(if_generation_match)
    del self.bucket.objects[self.name]


def test_the_gs_lock_takes_over_and_renews_only_the_generation_it_read(monkeypatch):
  monkeypatch.setattr(lock_lib, "HEARTBEAT_SECONDS", 0.05)
  bucket = _Bucket()
  from etils import epath
  path = epath.Path("gs://b/runs/x") / lock_lib.LOCK_NAME

  def new_lock():
    return lock_lib.WorkdirLock("gs://b/runs/x", file=lockfile.GcsLockFile(path, client=bucket))

  stale = dict(_stale_record(1), host="tpu-vm-7", heartbeat=time.time() - 2 * 3600)
  bucket.blob("runs/x/run.lock").upload_from_string(json.dumps(stale))
  # Two launchers read the same stale generation; the second's replacement fails.
  first, second = new_lock(), new_lock()
  _, version = first.file.read()
  assert first.file.replace(version, json.dumps({"token": first.token}))
  assert not second.file.replace(version, json.dumps({"token": second.token}))
  assert json.loads(bucket.objects["runs/x/run.lock"][1])["token"] == first.token
  # A holder's heartbeat renews its own lock, and stops once another run holds it.
  bucket.objects.clear()
  with distributed.preemption_handling():  # (clears the stop request the loss makes)
    held = new_lock()
    held.acquire()
    time.sleep(0.2)
    assert json.loads(bucket.objects["runs/x/run.lock"][1])["token"] == held.token
    bucket.blob("runs/x/run.lock").upload_from_string(json.dumps(dict(stale, token="theirs")))
    deadline = time.time() + 10
    while not held.lost and time.time() < deadline:
      time.sleep(0.02)
    assert held.lost and json.loads(bucket.objects["runs/x/run.lock"][1])["token"] == "theirs"
    held.release()
  assert json.loads(bucket.objects["runs/x/run.lock"][1])["token"] == "theirs"
