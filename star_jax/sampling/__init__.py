"""Sampling from the decoder: methods (methods.py), the jitted prefill and decode loop
(decode.py) and the batching front (sampler.py)."""

from star_jax.sampling.methods import SamplingParams
from star_jax.sampling.sampler import SampleOutput, Sampler

__all__ = ["SampleOutput", "Sampler", "SamplingParams"]
