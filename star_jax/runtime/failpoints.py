"""Crash-on-purpose hooks for the kill-and-resume tests.

``STAR_JAX_FAILPOINT=name:k`` makes the k-th ``hit(name)`` of the process kill
it with SIGKILL — the same as a preempted VM: no cleanup, no flushing. Unset
(the normal case) ``hit`` is a dictionary lookup.
"""

import collections
import os
import signal

_counts: collections.Counter = collections.Counter()


def hit(name: str) -> None:
  spec = os.environ.get("STAR_JAX_FAILPOINT")
  if not spec:
    return
  target, _, k = spec.partition(":")
  if target != name:
    return
  _counts[name] += 1
  if _counts[name] == int(k or 1):
    os.kill(os.getpid(), signal.SIGKILL)
