"""Mutations of real files and the property every reader of a user's file must keep.

A reader handed any mutation of a real file (bits flipped, cut short, a huge length or count
written over its header, a value of the wrong JSON type, nesting thousands deep, bytes that are
not UTF-8, nothing at all) either succeeds or refuses in one line that names the file
(``errors.UserError``): never another exception (a traceback), never a hang (``HANG_S``), never
an allocation past ``ALLOC_BOUND`` bytes (Python and numpy memory, traced).

``tests/*/test_fuzz_*.py`` run a short profile of these properties; ``benchmarks/fuzz.py`` runs
them for minutes and counts inputs per reader. The readers and their seed files are in
``fuzz_targets.py``.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import struct
import traceback
import tracemalloc
from typing import Any, Callable

from hypothesis import strategies as st

from star_jax.runtime.errors import UserError

HANG_S = 10.0  # a tiny file read in a second; ten seconds is a reader that trusted a header
ALLOC_BOUND = 64 * 2**20  # seeds are a few KiB: 64 MiB is an allocation a header asked for
HUGE = (2**31 - 1, 2**32 - 1, 2**40, 2**60, 2**63 - 1, 2**64 - 1)
NON_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\x00")
DEEP = 100_000  # "[" x DEEP: past any recursion limit
HOSTILE_JSON = (None, True, False, 0, -1, 2**64, 10**400, 1e308, -1e308, float("nan"),
                float("inf"), "", "x", "\udcff", "\u2028", "9" * 5000, [], {}, [[[[[[[[1]]]]]]]],
                {"a": {"b": {"c": [1, "2", None]}}}, ["x"] * 3)


class CommandLine(UserError):
  """What ``runtime.cli`` prints for a command line it refuses (a flag's value, a key)."""


class Violation(Exception):
  """An input broke the property: the message says how, then the input."""


@dataclasses.dataclass
class Tally:
  """What one reader did with the inputs it was handed."""
  tried: int = 0
  ok: int = 0
  refused: int = 0
  violations: list[str] = dataclasses.field(default_factory=list)

  def line(self, name: str) -> str:
    return (f"{name:<18} tried {self.tried:>6}  ok {self.ok:>6}  refused {self.refused:>6}  "
            f"violations {len(self.violations)}")


# --- mutations ---------------------------------------------------------------------------

def _flip(data: bytes, bits: list[tuple[int, int]]) -> bytes:
  out = bytearray(data)
  for i, b in bits:
    out[i % len(out)] ^= 1 << b
  return bytes(out)


def _overwrite(data: bytes, i: int, value: int, width: int) -> bytes:
  return data[:i] + struct.pack("<Q" if width == 8 else "<I", value % 2**(8 * width)) + \
      data[i + width:]


def byte_mutations(seed: bytes, head: int | None = None) -> st.SearchStrategy[bytes]:
  """Bit flips, truncations, huge integers written over the first ``head`` bytes (a binary
  header's lengths and counts), inserted junk and non-UTF-8 bytes, the empty file."""
  n, head = len(seed), min(head or len(seed), len(seed))
  pos, hpos = st.integers(0, max(n - 1, 0)), st.integers(0, max(head - 1, 0))
  return st.one_of(
      st.just(b""),
      pos.map(lambda i: seed[:i]),
      st.lists(st.tuples(hpos | pos, st.integers(0, 7)), min_size=1, max_size=8).map(
          lambda bits: _flip(seed, bits)),
      st.builds(lambda i, v, w: _overwrite(seed, i, v, w), hpos, st.sampled_from(HUGE),
                st.sampled_from((4, 8))),
      st.builds(lambda i, junk: seed[:i] + junk + seed[i:], pos,
                st.sampled_from(NON_UTF8) | st.binary(min_size=1, max_size=16)),
  )


def _paths(obj: Any, path: tuple = ()) -> list[tuple]:
  """Every place in a JSON value, the root included."""
  out = [path]
  items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
      else ()
  for k, v in items:
    out += _paths(v, path + (k,))
  return out


def _dumps(obj: Any) -> bytes:
  """JSON text; the string "__DEEP__" becomes an array nested ``DEEP`` levels."""
  text = json.dumps(obj, ensure_ascii=False)
  return text.replace('"__DEEP__"', "[" * DEEP + "]" * DEEP).encode("utf-8", "surrogatepass")


def _edit(obj: Any, path: tuple, op: str, value: Any) -> Any:
  obj = json.loads(json.dumps(obj))  # a copy
  if not path:
    return value if op != "drop" else {}
  parent = obj
  for k in path[:-1]:
    parent = parent[k]
  if op == "drop":
    del parent[path[-1]]
  elif op == "add" and isinstance(parent, dict):
    parent[f"{path[-1]}_unknown"] = value
  else:
    parent[path[-1]] = value
  return obj


def json_mutations(seed: Any) -> st.SearchStrategy[bytes]:
  """``seed`` with one value replaced by one of another type (or nested ``DEEP`` levels),
  a key dropped or an unknown one added; or its text mutated byte by byte."""
  value = st.sampled_from(HOSTILE_JSON + ("__DEEP__",)) | st.integers() | st.text(max_size=8)
  edits = st.builds(lambda p, op, v: _dumps(_edit(seed, p, op, v)), st.sampled_from(_paths(seed)),
                    st.sampled_from(("set", "set", "drop", "add")), value)
  return edits | byte_mutations(_dumps(seed))


def jsonl_mutations(rows: list[dict]) -> st.SearchStrategy[bytes]:
  """One line of a jsonl file mutated as JSON (the others kept), or the whole text as bytes."""
  lines = [_dumps(r) for r in rows]

  def one_line(i: int, text: bytes) -> bytes:
    return b"\n".join(lines[:i] + [text] + lines[i + 1:]) + b"\n"

  line_edits = st.integers(0, len(rows) - 1).flatmap(
      lambda i: json_mutations(rows[i]).map(lambda text: one_line(i, text)))
  return line_edits | byte_mutations(b"\n".join(lines) + b"\n")


# --- the property ------------------------------------------------------------------------

def _alarm(*_):
  raise TimeoutError(f"no answer in {HANG_S:.0f} s")


def check(read: Callable[[], Any], names: str | tuple[str, ...],
          one_line: Callable[[Exception], bool] | None = None) -> str:
  """Runs ``read()``: "ok", or "refused" (a ``UserError`` whose first line names ``names``, or
  one of them);
  raises ``Violation`` for anything else (another exception, a hang, a big allocation).
  ``one_line(e)``: whether a refusal may take more lines (default: never)."""
  old = signal.signal(signal.SIGALRM, _alarm)
  signal.setitimer(signal.ITIMER_REAL, HANG_S)
  tracemalloc.start()
  try:
    read()
    outcome, error = "ok", None
  except UserError as e:
    outcome, error = "refused", e
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # noqa: BLE001 - anything else (a Rust panic too) is a violation
    raise Violation(f"{type(e).__name__} at {_site(e)}: {_first(e)}\n"
                    f"{''.join(traceback.format_exception(e)[-6:])}") from e
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  if peak > ALLOC_BOUND:
    raise Violation(f"allocated {peak / 2**20:.0f} MiB (bound {ALLOC_BOUND / 2**20:.0f} MiB), "
                    f"{outcome}")
  if error is not None:
    text = str(error)
    lines = text.split("\n")
    if len(lines) > 1 and not (one_line and one_line(error)):
      raise Violation(f"{type(error).__name__} in {len(lines)} lines: {text[:500]!r}")
    if not any(name in lines[0] for name in ((names,) if isinstance(names, str) else names)):
      raise Violation(f"{type(error).__name__} does not name {names!r}: {lines[0][:300]!r}")
  return outcome


def _site(e: BaseException) -> str:
  """file:line of the project's deepest frame in ``e``'s traceback (else the deepest)."""
  frames = traceback.extract_tb(e.__traceback__)
  ours = [f for f in frames if "/star_jax/" in f.filename] or frames[-1:]
  return f"{ours[-1].filename.rsplit('/', 2)[-1]}:{ours[-1].lineno}" if ours else "?"


def _first(e: BaseException) -> str:
  text = str(e).split("\n")[0]
  return text[:300]


def tally_one(tally: Tally, read: Callable[[], Any], names: str | tuple[str, ...], shown: Any,
              one_line: Callable[[Exception], bool] | None = None) -> None:
  """``check`` counted into ``tally``; a violation is kept with the input (``shown``)."""
  tally.tried += 1
  try:
    if check(read, names, one_line) == "ok":
      tally.ok += 1
    else:
      tally.refused += 1
  except Violation as v:
    tally.violations.append(f"{v}\n  input: {shown!r}"[:3000])
