"""Crash-on-purpose hooks for the fault tests (kill, preemption, full disk).

``STAR_JAX_FAILPOINT=name:k`` makes the k-th ``hit(name)`` of the process kill
it with SIGKILL — the same as a VM that vanishes: no cleanup, no flushing.
``name:k:TERM`` sends it SIGTERM instead (a preemption notice; the time it was
sent goes to stderr, for the test to time the exit), and ``name:k:ENOSPC``
raises the OSError of a full disk there. Unset (the normal case) ``hit`` is a
dictionary lookup.
"""

import collections
import errno
import os
import signal
import sys
import time

_counts: collections.Counter = collections.Counter()


def hit(name: str, path: object = "") -> None:
  """A failpoint; ``path`` is the file being written, for the ENOSPC action."""
  spec = os.environ.get("STAR_JAX_FAILPOINT")
  if not spec:
    return
  target, _, rest = spec.partition(":")
  if target != name:
    return
  k, _, action = rest.partition(":")
  _counts[name] += 1
  if _counts[name] != int(k or 1):
    return
  if action == "ENOSPC":
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path) or None)
  if action == "TERM":
    sys.stderr.write(f"failpoint {spec}: SIGTERM sent at {time.time():.3f}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGTERM)
    return
  os.kill(os.getpid(), signal.SIGKILL)
