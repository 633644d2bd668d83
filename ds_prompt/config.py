"""Run configuration: a dataclass, filled from a JSON/YAML file and then CLI flags (flags win).

Unknown keys are errors (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ds_prompt.data.tasks import use_task
from ds_prompt.errors import UserError
from ds_prompt.io import atomic_path


def model_slug(model: str | None) -> str:
    """`--model` as part of a default output folder name. A local path (a model folder, a .gguf file) is named by
    its last component without `.gguf` plus 6 hex digits of its absolute path, not by the whole, possibly
    absolute, path: `runs/sst2-SmolLM2-135M-Instruct.Q4_1-3f9a1c`; two models that share a file name (every
    `checkpoint-500`) still get two folders. Hub ids and tiny:<arch> keep their spelling, `/` and `:` made `_`."""
    name = str(model or "unknown")
    if os.path.exists(name):
        path = os.path.abspath(name)  # not resolve(): a symlinked model is named as typed
        base = Path(path).name
        base = base[:-len(".gguf")] if base.lower().endswith(".gguf") else base
        name = f"{base}-{hashlib.sha1(path.encode()).hexdigest()[:6]}"
    return name.replace("/", "_").replace(":", "_")


# ---- argument groups: each recipe config composes the ones it honours (field names are the CLI flag names) ----
@dataclass
class ModelArgs:
    """The frozen backbone and how the class is read from it."""
    model: str = "minilm"                 # hub name, local folder, minilm/smollm2 (packaged), a .gguf or tiny:<arch>
    family: str | None = None             # override auto-detection: mlm, encoder, causal, seq2seq
    head: str = "auto"                    # auto, label_words, similarity, linear
    dtype: str = "auto"                   # auto (bf16 on GPU, fp32 on CPU), fp32, bf16
    attn_implementation: str = "sdpa"
    max_length: int = 128                 # tokens, prompt included


@dataclass
class DataArgs:
    """Where the examples come from and how many are used."""
    data_dir: str | None = None           # task folder or a root with <task>/ folders; None = hub / bundled demo
    train_limit: int | None = None        # seeded subset of the training split
    eval_limit: int | None = 1000         # cap on eval examples (seeded subset); None = all
    eval_batch_size: int = 64


@dataclass
class OptimArgs:
    """The optimizer and the LR schedule of the trainable parameters."""
    lr: float = 3e-3
    optimizer: str = "adamw"              # adamw, adafactor
    weight_decay: float = 0.0
    scheduler: str = "constant"           # transformers.get_scheduler name: constant, linear, cosine, ...
    warmup_steps: int = 0
    grad_clip: float = 1.0


@dataclass
class LoopArgs:
    """The step loop: budget, batch, cadence of logs/evals/checkpoints, the run folder."""
    output_dir: str | None = None         # default runs/<recipe-specific name>
    max_steps: int = 300
    batch_size: int = 16                  # GLOBAL batch per optimizer step (all ranks x grad_accum)
    grad_accum: int = 1
    seed: int = 42
    eval_every: int = 100                 # steps; 0 = only at the end
    save_every: int = 100                 # steps between trainable-state checkpoints; 0 = never
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = True                   # continue from <output_dir>/checkpoints/latest if present (the
                                          # same run only: see run.json); false in a used folder is refused
    overwrite: bool = False               # clear a used --output_dir completely before starting
    progress: bool = True


@dataclass
class EngineArgs:
    """DeepSpeed and the forward's execution."""
    deepspeed: str | None = None          # ds_configs name (zero0, zero2, zero3, zero3_offload) or a JSON path
    activation_checkpointing: bool = False
    shortcuts: bool = True                # exact compute savings (last layer at the scoring position, causal shared
                                          # prompt prefix); False runs the plain full forward (same results)


GROUPS = (ModelArgs, DataArgs, OptimArgs, LoopArgs, EngineArgs)


@dataclass
class TrainConfig(EngineArgs, LoopArgs, OptimArgs, DataArgs, ModelArgs):
    """Everything a prompt-tuning run needs: the shared groups plus the prompt's own settings."""
    task: str = "demo"                    # a task name, a task file (.yaml/.json) or a `task:` mapping in --config
    prompt_length: int = 20
    init: str = "normal:0.02"             # normal[:std], uniform, vocab, text:W, file:P, library:NAME
    quantization: str = "none"            # none, int8, nf4 (bitsandbytes)
    schedule_steps: int | None = None     # steps the LR schedule spans (default max_steps; FPT: the whole plan)
    init_state: str | None = None         # a previous run's output_dir: start from its latest trainable state
                                          # (prompt, optimizer moments, schedule, step) -- FPT stage hand-off
    reset_optimizer: bool = False         # with init_state: take only the prompt, fresh optimizer/schedule
    bucket: bool = True                   # length-bucketed batches

    def resolved_output_dir(self) -> str:
        if self.output_dir:
            return self.output_dir
        return str(Path("runs") / f"{self.task}-{model_slug(self.model)}")


_NON_NEGATIVE = ("eval_every", "save_every", "warmup_steps", "weight_decay", "grad_clip", "log_every")
_POSITIVE = ("max_steps", "batch_size", "grad_accum", "prompt_length", "lr", "max_length", "eval_batch_size",
             "keep_checkpoints", "hidden")


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def parse_annotation(annotation) -> tuple[type | None, bool]:
    """(base scalar type or None when not a plain int/float/bool/str, whether None is allowed) of an
    annotation ("int | None" -> (int, True)); annotations may be strings (from __future__ import annotations)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [part.strip() for part in str(text).split("|")]
    names = [part for part in parts if part != "None"]
    return (_TYPES.get(names[0]) if len(names) == 1 else None), "None" in parts


def field_type(field: dataclasses.Field) -> type:
    """The base type of a field from its annotation ("int | None" -> int); str when not a plain scalar."""
    return parse_annotation(field.type)[0] or str


def _coerce(name: str, value, target: type):
    """Convert a flag/config value to the field's type; UserError naming the field if impossible."""
    if value is None:
        return None
    try:
        if target is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if target is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"--{name} {value!r} is not a valid {target.__name__}") from None


def load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{path}' does not exist: pass --config PATH to a JSON or YAML file")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers raise their own error types
        raise UserError(f"config file '{path}' cannot be parsed ({type(exc).__name__}): fix its syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of flag names to values")
    return data


def build_config(cls=TrainConfig, config: str | None = None, keep_none: bool = False, **overrides):
    """`cls` from defaults, then the `config` file, then `overrides` (CLI flags). Validates every value.

    Overrides that are None mean "not given" unless `keep_none` (the CLI passes only flags the user typed,
    so `--eval_limit None` there means "no limit")."""
    values = load_config_file(config) if config else {}
    values.update({k: v for k, v in overrides.items() if keep_none or v is not None})
    if isinstance(values.get("task"), dict):  # a `task:` mapping in the config file: validated, registered
        values["task"] = use_task(values["task"]).name
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(unknown)}: valid keys are {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        if value is None and "None" not in str(fields[name].type):
            raise UserError(f"--{name} cannot be None: give a value")
        kwargs[name] = _coerce(name, value, field_type(fields[name]))
    cfg = cls(**kwargs)
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{f.name} {value} must be a finite number")
    for name in _POSITIVE:
        if hasattr(cfg, name) and getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be > 0, got {getattr(cfg, name)}")
    for name in _NON_NEGATIVE:
        if hasattr(cfg, name) and getattr(cfg, name) < 0:
            raise UserError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    if hasattr(cfg, "quantization") and hasattr(cfg, "model"):
        check_quantization(cfg.model, cfg.quantization)
    _check_choices(cfg)
    return cfg


INIT_CHOICES = "normal[:std], uniform, vocab, text:<words>, file:<prompt.safetensors|peft dir>, library:<name>"


INIT_KINDS = ("normal", "uniform", "vocab", "text", "file", "library")


@dataclass(frozen=True)
class InitSpec:
    """A parsed --init. The flag stays a string in configs, config.yaml and run.json; it is parsed into this
    typed form when flags and config files are checked (before any work), and every consumer (the model layer's
    `init_prompt_tensor`, SPT, the library resolver) reads the spec through `InitSpec.parse`."""
    kind: str           # one of INIT_KINDS
    arg: str = ""       # normal: the std ("" = 0.02); text: the words; file: a path; library: an entry name

    @classmethod
    def parse(cls, init: "str | InitSpec") -> "InitSpec":
        """UserError unless `init` is a well-formed init spec (checked when flags are parsed, before any work)."""
        if isinstance(init, InitSpec):
            return init
        kind, sep, arg = str(init).partition(":")
        if kind == "normal" and sep:
            try:
                std = float(arg)
            except ValueError:
                raise UserError(f"--init '{init}': the std after 'normal:' must be a number, e.g. normal:0.02") \
                    from None
            if not math.isfinite(std) or std <= 0:
                raise UserError(f"--init '{init}': the std must be a finite number > 0, e.g. normal:0.02")
        elif kind in ("uniform", "vocab") and sep:
            raise UserError(f"--init '{init}': {kind} takes no argument")
        elif kind in ("text", "file", "library") and not arg.strip():
            raise UserError(f"--init '{init}' needs a value after '{kind}:'")
        elif kind not in INIT_KINDS:
            raise UserError(f"unknown --init '{init}': use one of {INIT_CHOICES}")
        return cls(kind, arg)

    @property
    def std(self) -> float:
        """normal's standard deviation."""
        return float(self.arg) if self.arg else 0.02

    def __str__(self) -> str:
        return f"{self.kind}:{self.arg}" if self.arg else self.kind


# Choice-list flags, shared by every command that takes them (checked when flags are parsed, by
# `cli_args.check_argv`, and again when a config is built from a file).
CHOICES = {"scheduler": ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                         "inverse_sqrt"),  # transformers.get_scheduler's, minus those needing extra arguments
           "optimizer": ("adamw", "adafactor"),
           "dtype": ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"),
           "family": (None, "mlm", "encoder", "causal", "seq2seq"),
           "head": ("auto", "label_words", "similarity", "linear"),
           "quantization": (None, "none", "int8", "nf4"),
           "format": ("peft", "prompt")}  # export: peft; spt export: prompt or peft


def check_choice(name: str, value) -> None:
    """UserError unless `value` of --`name` is one of CHOICES[name] (names without a list pass; --family in any
    case, as parse_family reads it)."""
    if name not in CHOICES:
        return
    shown = value.lower() if isinstance(value, str) and name == "family" else value
    if shown not in CHOICES[name]:
        listed = ", ".join(str(a) for a in CHOICES[name] if a is not None)
        raise UserError(f"unknown --{name} '{value}': use one of {listed}")


def _parse_scalar(name: str, raw: str, kind: type):
    """A flag's raw text as `kind` (int accepts 1e3-style integral floats, as fire reads them)."""
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            value = float(raw)
            if not value.is_integer():
                raise ValueError from None
            return int(value)
    return _coerce(name, raw, kind)


def check_value(name: str, raw: str | None, kind: type | None, optional: bool) -> None:
    """UserError unless the raw flag text `raw` (None: a bare `--name`) is a valid `kind` value for `--name`,
    one of CHOICES[name] where listed, and a well-formed spec for --init."""
    if raw is None:
        if kind in (bool, None):
            return
        raise UserError(f"--{name} needs a value ({kind.__name__})")
    if raw in ("None", "null"):
        if optional:
            return
        if kind is not str:
            raise UserError(f"--{name} cannot be None: give a value")
    if kind is not None and kind is not str:
        try:
            _parse_scalar(name, raw, kind)
        except (ValueError, UserError):
            raise UserError(f"--{name} {raw!r} is not a valid {kind.__name__}") from None
    check_choice(name, raw)
    if name == "init" and kind is str:
        InitSpec.parse(raw)


def _check_choices(cfg) -> None:
    """Choice-list flags, the init spec and the schedule, checked before anything loads or is written."""
    for name in CHOICES:
        if hasattr(cfg, name):
            check_choice(name, getattr(cfg, name))
    if isinstance(getattr(cfg, "init", None), str):
        InitSpec.parse(cfg.init)
    if hasattr(cfg, "warmup_steps") and hasattr(cfg, "max_steps"):
        span = getattr(cfg, "schedule_steps", None) or cfg.max_steps
        if cfg.warmup_steps > span:
            raise UserError(f"--warmup_steps {cfg.warmup_steps} exceeds the {span} steps the schedule spans: "
                            f"lower it below --max_steps")


def check_quantization(model: str, quantization: str | None) -> None:
    """UserError unless `quantization` is none/int8/nf4 and applicable to `model` (bitsandbytes quantizes while
    loading a checkpoint, so in-memory tiny:<arch> models cannot be quantized)."""
    if quantization in (None, "none"):
        return
    if quantization not in ("int8", "nf4"):
        raise UserError(f"unknown --quantization '{quantization}': use none, int8 or nf4")
    if str(model).startswith("tiny:"):
        raise UserError(f"--quantization {quantization} needs a model folder or hub name (bitsandbytes quantizes "
                        f"while loading); '{model}' is built in memory: save it with save_pretrained() and pass "
                        f"the folder")


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def write_config_yaml(out: str, cfg) -> None:
    """<out>/config.yaml: the resolved config of a run (defaults, config file and flags merged); it is a valid
    --config file for the same run."""

    path = Path(out) / "config.yaml"
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(config_dict(cfg), f, sort_keys=False)
