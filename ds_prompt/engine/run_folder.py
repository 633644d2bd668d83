"""A run folder belongs to one run: an identity manifest, an exclusive lock, and strict resume rules.

<output_dir>/run.json records what makes a run *that* run (recipe, backbone and its fingerprint, task(s) and
held-out set, data fingerprint, prompt shape, seed, batch, ...). Rank 0 claims the folder before any work:
- a second process that wants the same folder fails at once (an OS `flock` on <output_dir>/.lock, held for
  the process's life and released by the OS when it exits, so a crash never leaves a stale lock);
- resuming (the default) continues only a run with the same identity; a difference is one error line naming
  the field, offering another --output_dir or --overwrite;
- `--resume false` in a folder that holds a run refuses; `--overwrite` clears the folder completely first, so
  two runs' checkpoints are never mixed;
- a `--max_steps` below the steps a finished run already reached is an error, not a silent no-op.
A folder the claim created is removed again if the run fails before its first checkpoint.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from ds_prompt.data.loading import resolve_data_dir, split_sources
from ds_prompt.errors import UserError
from ds_prompt.io import ensure_writable_dir, write_json
from ds_prompt.models.gguf import SMOLLM2, file_sha256, is_gguf, locate_smollm2

RUN_FILE, LOCK_FILE = "run.json", ".lock"
FORMAT = "ds_prompt.run/1"
_RESULTS = ("checkpoints/latest", "metrics.json", "prompt.safetensors", "bank.safetensors")  # worth keeping
_MARKERS = (RUN_FILE, "checkpoints", *_RESULTS[1:])  # a folder holding any of these holds a run


@dataclass
class RunFolder:
    """A claimed run folder (rank 0); `release(failed)` unlocks it, removing it if the claim created it and
    the run failed before writing anything worth keeping."""
    path: Path
    created: bool
    lock: object | None

    def release(self, failed: bool = False) -> None:
        if failed and self.created and not any((self.path / name).exists() for name in _RESULTS):
            shutil.rmtree(self.path, ignore_errors=True)
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def take_lock(folder: Path):
    """An exclusive flock on <folder>/.lock for this process's life (UserError naming the holder if taken)."""
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"--output_dir {folder} is in use by another run ({holder}): wait for it to finish, or "
                        f"pass another --output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in _MARKERS)


def _clear(folder: Path) -> None:
    """Everything in `folder` but the lock we hold."""
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _first_difference(old: dict, new: dict) -> str | None:
    """The first differing field, in the identity's own order (recipe, model, backbone, task, data, ...)."""
    for key in list(dict.fromkeys([*new, *old])):
        if old.get(key) != new.get(key):
            return key
    return None


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _finished_steps(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / "metrics.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def claim(output_dir: str, recipe: str, identity: dict, max_steps: int, resume: bool,
          overwrite: bool) -> RunFolder:
    """Claim `output_dir` for this run (call on rank 0 only; see the module docstring for the rules)."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output_dir {folder} is a file: pass a folder")
    created = not folder.exists()
    ensure_writable_dir(folder)
    run = RunFolder(folder, created, take_lock(folder))
    try:
        _check(folder, recipe, identity, max_steps, resume, overwrite)
    except BaseException:
        run.release(failed=True)
        raise
    write_json(folder / RUN_FILE, {"format": FORMAT, "recipe": recipe, "identity": identity,
                                   "max_steps": max_steps})
    return run


def _check(folder: Path, recipe: str, identity: dict, max_steps: int, resume: bool, overwrite: bool) -> None:
    if not _holds_a_run(folder):
        return
    if overwrite:
        _clear(folder)
        return
    if not resume:
        raise UserError(f"--output_dir {folder} holds a run already and --resume false would mix two runs' "
                        f"checkpoints: pass --overwrite to replace it, or another --output_dir")
    manifest = _read_manifest(folder)
    if manifest is not None:  # folders from before run.json existed are adopted as they are
        old = {"recipe": manifest.get("recipe"), **manifest.get("identity", {})}
        new = {"recipe": recipe, **identity}
        field = _first_difference(old, new)
        if field is not None:
            raise UserError(f"--output_dir {folder} holds another run ({field}: {_short(old.get(field))} there, "
                            f"{_short(new.get(field))} now): pass another --output_dir, or --overwrite to replace it")
    done = _finished_steps(folder)
    if done is not None and max_steps < done:
        raise UserError(f"--max_steps {max_steps} is below the {done} steps this run already finished in "
                        f"{folder}: pass --max_steps >= {done} (or --overwrite to start over)")


def _read_manifest(folder: Path) -> dict | None:
    path = folder / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"'{path}' is not valid JSON: delete it to adopt the folder, or pass --overwrite") from None


# ---- fingerprints ----------------------------------------------------------------------------------------------
def _file_digest(path: Path, head: int = 1 << 16) -> str:
    """Size and a hash of the first 64 KiB: cheap, and changes when the file is replaced or edited."""
    with open(path, "rb") as f:
        digest = hashlib.sha1(f.read(head)).hexdigest()[:16]
    return f"{path.stat().st_size}:{digest}"


def backbone_fingerprint(model: str) -> str:
    """What identifies the weights behind `--model`: a GGUF's sha256, a local folder's config and weight files,
    else the name (hub ids, `minilm`, `tiny:<arch>`)."""
    if model == SMOLLM2:
        return "sha256:" + file_sha256(locate_smollm2())
    path = Path(model)
    if is_gguf(model) and path.is_file():
        return "sha256:" + file_sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin"))
        return ";".join(f"{p.name}={_file_digest(p)}" for p in files) or model
    return model


def data_fingerprint(task, data_dir: str | None) -> dict:
    """{split: file and digest} of the task's local files, or the hub dataset it comes from."""
    folder = resolve_data_dir(task, data_dir)
    if folder is None:
        return {"hub": f"{task.hub_path}:{task.hub_config}"}
    out = {}
    for split in ("train", "eval"):
        try:
            paths = split_sources(task, split, folder)
        except UserError:
            continue
        out[split] = ";".join(f"{path.name}={_file_digest(path)}" for path in paths)
    return out
