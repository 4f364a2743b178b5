"""attnrl-jax: AttnRL (attention-guided process-supervised RL) for reasoning models, in JAX.

Every dependency is pinned here and only here; `make` installs from this file.
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.24.0",
    "grain==0.2.18",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "sympy==1.14.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "math-verify==0.9.0",
    "latex2sympy2-extended==1.11.0",
    "tqdm==4.70.1",  # progress bars
    "tensorboardX==2.6.5",  # TensorBoard event files from the trainer
    "matplotlib==3.11.2",  # the demo's plot
]

EXTRAS_REQUIRE = {
    # torch is only used by tests and benchmarks as the reference implementation.
    # Always an exact pin: an unpinned torch resolves to a multi-GB CUDA build.
    # gcp-storage-emulator: the local GCS server of the gs:// tests (tests/gcs_emulator.py).
    "test": [
        "torch==2.13.0",
        "pytest==9.2.0",
        "ruff==0.17.6",
        "gcsfs==2026.10.1",
        "gcp-storage-emulator==2026.7.19",
    ],
    # gs:// workdirs, model paths and export targets (attnrl_jax/storage.py): gcsfs is the file
    # layer under etils.epath (orbax's path type); arrays go through tensorstore's gcs driver.
    "gcs": ["gcsfs==2026.10.1"],
    # Cloud TPU VMs: jax's TPU runtime, the libtpu that jax 0.10.2 installs (launch/tpu_pod.sh).
    "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],
}

setup(
    name="attnrl-jax",
    version="0.1.0",
    description="AttnRL: attention-guided process-supervised RL for reasoning models, in JAX",
    python_requires=">=3.11",
    packages=find_packages(include=["attnrl_jax", "attnrl_jax.*"]),
    # the bundled evaluation sets (attnrl_jax/eval/benchmarks/SOURCES.md: origin and licences)
    package_data={"attnrl_jax.eval": ["benchmarks/*.jsonl", "benchmarks/SOURCES.md"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
