"""A preemption notice is received when it arrives, even while the main thread is inside a
long call that runs no Python (a compile, a step): the grace starts then, not after."""

import os
import signal
import subprocess
import sys

from helpers.runs import ROOT

# The main thread spends BUSY seconds in one C call that releases the GIL and runs no Python
# (as XLA's compile and execute do); a thread sends SIGTERM half a second in and times how long
# the notice takes to be seen.
CODE = """
import hashlib, os, signal, threading, time
from star_jax.runtime import distributed

t = time.time()
hashlib.pbkdf2_hmac("sha256", b"x", b"y", 20000)
rounds = int(20000 * {busy} / (time.time() - t))

def send():
  time.sleep(0.5)
  sent = time.time()
  os.kill(os.getpid(), signal.SIGTERM)
  while not distributed.preemption_requested():
    time.sleep(0.002)
  print(f"RECEIVED {{time.time() - sent:.3f}}", flush=True)

with distributed.preemption_handling():
  threading.Thread(target=send, daemon=True).start()
  hashlib.pbkdf2_hmac("sha256", b"x", b"y", rounds)
  print("BUSY DONE", flush=True)
"""


def test_a_notice_is_received_at_once_and_its_grace_runs_from_then():
  busy, grace = 8, 1
  proc = subprocess.run([sys.executable, "-c", CODE.format(busy=busy)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu",
                                 STAR_JAX_PREEMPT_GRACE_SECONDS=str(grace)))
  lines = proc.stdout.split("\n")
  received = [float(line.split()[1]) for line in lines if line.startswith("RECEIVED")]
  assert received and received[0] < 0.5, proc.stdout + proc.stderr  # not after the call
  # The grace ran out while the main thread was still busy: the process ended then.
  assert proc.returncode == 128 + signal.SIGTERM, proc.stdout + proc.stderr
  assert "BUSY DONE" not in proc.stdout
  assert f"no safe point within {grace}s of the notice" in proc.stderr
