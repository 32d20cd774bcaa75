"""star_jax: STaR (Self-Taught Reasoner) in pure JAX."""

from setuptools import find_packages, setup

# Versions tested together on Python 3.11 (CPU); see README "Install".
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "etils[epath]==1.15.0",  # workdir paths (local, gs://); also what orbax reads paths with
    "tensorflow-datasets==4.9.10",
    "sentencepiece==0.2.3",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy>=2.0,<3",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    # Pre-trained checkpoints: HF safetensors, GGUF, HF tokenizers, chat templates.
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "gguf==0.19.0",
    "jinja2==3.1.6",
    # Models by hub id (org/name[@revision]): snapshots in the Hugging Face cache.
    "huggingface_hub==2.4.0",
    # TensorBoard event files without TensorFlow.
    "tensorboardX==2.6.5",
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest==9.2.0",
        "hypothesis==6.155.2",
        # The suite on two worker processes (`pytest -n 2`): compiles and runs overlap.
        "pytest-xdist==3.8.0",
        # Parity oracle. Exactly this torch: a looser spec pulls several GB of CUDA.
        "torch==2.13.0",
        "transformers==5.23.0",
        "accelerate==1.15.0",
        # Headless notebook execution.
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
    # The peers of benchmarks/ (not the core install): TRL, whose GRPO and DPO losses the
    # parity tests restate in torch (tests/engine/test_losses.py).
    # Tunix (google-tunix==0.1.7), benchmarks/grpo_step.py's peer, pins safetensors < 0.8
    # against our 0.8.0, so it is installed beside these with --no-deps (docs/benchmarks.md).
    "bench": ["trl==1.16.0", "torch==2.13.0", "transformers==5.23.0"],
    # The TPU compiler, to plan TPU slices on any host (python -m star_jax.plan --topology=...):
    # jax[tpu]'s libtpu for the pinned jax. On a TPU VM, `pip install "jax[tpu]==0.10.2"`.
    "tpu": ["libtpu==0.0.42.1"],
    # gs:// workdirs: etils.epath's GCS backend (gcsfs) and tensorboardX's event uploads
    # (google-cloud-storage); orbax writes checkpoints through tensorstore's own GCS driver.
    # Not pinned: no test here reaches GCS.
    "gcs": ["gcsfs", "google-cloud-storage"],
}

setup(
    name="star_jax",
    version="0.1.0",
    description="STaR (Self-Taught Reasoner) in pure JAX: one sharded Flax decoder for "
                "sampling and training.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["star_jax", "star_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license="Apache-2.0",
)
