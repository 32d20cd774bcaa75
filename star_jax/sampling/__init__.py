"""Sampling from the decoder: sampling parameters and token choice (sampling_params.py), the jitted prefill and decode loop
(decode.py), the batching front (sampler.py) and what it returns (outputs.py)."""

from star_jax.sampling.sampling_params import SamplingParams
from star_jax.sampling.outputs import SampleOutput
from star_jax.sampling.sampler import Sampler

__all__ = ["SampleOutput", "Sampler", "SamplingParams"]
