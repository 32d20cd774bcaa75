"""A program the TPU compiler refuses for want of HBM is a one-line MemoryError at run time
and a plan that does not fit, not a traceback."""

import pytest

from star_jax.runtime import compiling

# What libtpu 0.0.42.1 raised planning Llama-3-8B's full fine-tune on a v4-8 (2026-12-03).
REFUSAL = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
           "space hbm. Used 30.77G of 30.75G hbm. Exceeded hbm capacity by 24.40M.\n\nTotal hbm "
           "usage >= 32.0...")
# ...and for a tiny model's train step of 8,192 rows on v5e:2x2.
TEMPORARIES = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
               "temporaries (108.29G) exceeds available HBM (15.75G).")


class _Refused:
  def lower(self, *args):
    return self

  def compile(self):
    raise RuntimeError(REFUSAL)


def test_the_compilers_refusal_is_read_and_anything_else_is_not():
  assert compiling.out_of_device_memory(RuntimeError(REFUSAL)) == (
      int(30.77 * 2**30), int(30.75 * 2**30), "total")
  assert compiling.out_of_device_memory(RuntimeError(TEMPORARIES)) == (
      int(108.29 * 2**30), int(15.75 * 2**30), "temporaries")
  assert compiling.out_of_device_memory(RuntimeError("INTERNAL: something else")) is None


def test_a_refused_program_is_a_memory_error_naming_it_and_the_figures():
  with pytest.raises(MemoryError, match=r"train step needs 30\.77 GiB per device but the device "
                                        r"has 30\.75 GiB .*; try remat"):
    compiling.compiled(_Refused(), (), "train step", hint="try remat")
