"""One FPT stage's pieces: its job file (`StageJob`) and the model transform that makes the backbone the
stage's partial model (`StageTransform`); recipes.fpt_stage runs them through prompt tuning."""
from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ds_prompt import dist
from ds_prompt.builders import build_prompted
from ds_prompt.config import TrainConfig
from ds_prompt.data.encoding import TemplateEncoder, collate
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.engine import state as ckpt
from ds_prompt.engine.setup import device
from ds_prompt.errors import UserError
from ds_prompt.fpt.flops import LengthStats, ModelShape
from ds_prompt.fpt.names import LENGTH_SAMPLE, STAGE_INFO
from ds_prompt.fpt.partial import PartialModelSpec, apply_partial, neuron_scores
from ds_prompt.io import write_json, write_tensors
from ds_prompt.models.family import Family

# ------------------------------------------------------------------------------------ stage side (one job)

@dataclass(frozen=True)
class StageJob:
    """What one stage process runs: a complete TrainConfig plus the partial model and where to put info."""
    index: int
    train: dict
    depth: int | float
    width: float
    scores_path: str
    score_samples: int

    @property
    def spec(self) -> PartialModelSpec:
        return PartialModelSpec(self.depth, self.width)

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str) -> "StageJob":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"stage file '{path}' is unreadable ({exc}): it is written by `ds-prompt fpt`; "
                            f"re-run that command") from None


class StageTransform:
    """`model_transform` of one stage: record the full model's shape and the data's lengths (FLOPs), get
    neuron scores if the stage reduces width, then make the backbone the stage's partial model in place."""

    def __init__(self, cfg: TrainConfig, job: StageJob):
        self.cfg, self.job = cfg, job

    def __call__(self, backbone) -> None:
        task = get_task(self.cfg.task)
        # Scoring must not move the global RNG the trainer seeded (the run must equal a plain one).
        with torch.random.fork_rng(devices=[]):
            encoded = self._encoded_sample(backbone, task)
            shape = ModelShape.from_model(backbone.model, backbone.family, task.num_labels)
            spec = self.job.spec
            scores = None if spec.keeps_all_neurons else self._scores(backbone, task, encoded)
            info = apply_partial(backbone.model, spec, scores)
        lengths = LengthStats.of([len(e.input_ids) + self.cfg.prompt_length for e in encoded])
        dist.on_rank0(write_json, Path(self.cfg.output_dir) / STAGE_INFO, {
            "shape": shape.to_dict(), "lengths": dataclasses.asdict(lengths), "length_sample": len(encoded),
            "partial": info.to_dict(), "world_size": dist.world_size()})

    def _encoded_sample(self, backbone, task) -> list:
        cfg = self.cfg
        examples = load_examples(task, "train", cfg.data_dir, limit=cfg.train_limit, seed=cfg.seed)
        n = min(len(examples), max(LENGTH_SAMPLE, self.job.score_samples))
        sample = random.Random(cfg.seed).sample(examples, n)
        encoder = TemplateEncoder(task, backbone.tokenizer, backbone.family, cfg.max_length, cfg.prompt_length)
        return [encoder.encode(e) for e in sample]

    def _scores(self, backbone, task, encoded) -> dict[str, torch.Tensor]:
        path = Path(self.job.scores_path)
        if dist.broadcast_object(path.is_file()):  # rank 0 decides, so every rank takes the same branch
            return load_file(str(path))
        scored = encoded[:self.job.score_samples]
        scores = self._compute_scores(backbone, task, scored)
        # what the scoring cost (the FPT report counts it): which stage, how many samples, their prompted lengths
        lengths = LengthStats.of([len(e.input_ids) + self.cfg.prompt_length for e in scored])
        dist.on_rank0(write_tensors, path, scores, {"stage": str(self.job.index), "samples": str(len(scored)),
                                                   "lengths": json.dumps(dataclasses.asdict(lengths))})
        dist.barrier()
        return scores

    def _current_prompt(self):
        """The prompt at the start of this stage: the previous stage's, else the run's initial prompt spec."""
        if not self.cfg.init_state:
            return self.cfg.init
        tensors, _ = ckpt.load_latest(self.cfg.init_state) or (None, None)
        if tensors is None:
            raise UserError(f"stage {self.job.index} starts from {self.cfg.init_state}, which has no checkpoint: "
                            f"delete {self.cfg.output_dir} and re-run the fpt command")
        return tensors["param/prompt.weight"]

    def _compute_scores(self, backbone, task, encoded) -> dict[str, torch.Tensor]:
        """Mean |FFN activation| per neuron with the current prompt. Every rank scores every sample (a
        forward pass over ~1000 samples is small next to training, and a partitioned backbone needs all ranks
        in every forward anyway); rank 0's scores are broadcast so all ranks select the same neurons."""
        cfg = self.cfg
        home, work = next(backbone.model.parameters()).device, device()
        # Score on the accelerator. ZeRO-3 partitions and quantized weights already live there.
        movable = home != work and not any(dist.is_zero3_param(p) for p in backbone.model.parameters())
        if movable:
            backbone.model.to(work)
        built = build_prompted(backbone, task, cfg.prompt_length, cfg.max_length, cfg.head,
                               self._current_prompt(), cfg.seed)
        built.model.prompt.to(work)
        built.model.head.to(work)
        pad, left = backbone.tokenizer.pad_token_id, backbone.family is Family.CAUSAL
        size = cfg.eval_batch_size
        batches = (collate(encoded[i:i + size], pad, left) for i in range(0, len(encoded), size))
        scores = dist.broadcast_object(neuron_scores(built.model, batches))
        if movable:
            backbone.model.to(home)
        return scores
