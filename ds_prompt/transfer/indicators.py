"""Transferability indicators between two prompts (REFERENCE §1, Su et al. 2022).

Embedding similarity, for prompts P1, P2 of shape [L, d] and their flattenings p1, p2:
  cos       = cos(p1, p2)                                  (needs equal shapes)
  cos_token = mean over all (i, j) of cos(P1_i, P2_j)
  euc       = 1 / (1 + ||p1 - p2||)                        (needs equal shapes)
  euc_token = 1 / (1 + mean over (i, j) of ||P1_i - P2_j||)
Activated neurons: feed [prompt; bos] (MLM: [prompt; bos; mask]; optionally task text, several samples) to the
frozen model, record the FFN intermediate of every layer (`activations.prompted_ffn_activations`), keep one
position (default the family's scoring position, which has seen the whole prompt: the mask slot, the last
token, the first decoder step; or k, e.g. 0 = the first prompt vector) and binarize m = 1[a > 0] (the
`kernels.activation_stats` kernel; gated FFNs binarize act(gate) * up, or with neuron="gate" the gate). Then
  on = |m1 AND m2| / sqrt(|m1| * |m2|)                     (cosine of binary masks)
over all layers, and over layer windows [l, l + window). Values are plain floats; only rank order matters
(released prompts differ in norm by 30x). `spearman_against` correlates each indicator with transfer accuracy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ds_prompt import dist
from ds_prompt.artifacts import check_prompt_fits
from ds_prompt.builders import load_model_for
from ds_prompt.data.encoding import TemplateEncoder, collate
from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.engine import setup as ds_setup
from ds_prompt.errors import UserError
from ds_prompt.kernels.activation_stats import activation_mask, activation_stats
from ds_prompt.models.family import Family
from ds_prompt.models.prompted import PromptedModel
from ds_prompt.transfer.activations import SCORE, FixedPrompt, per_token_position, prompted_ffn_activations
from ds_prompt.transfer.matrix import read_csv, write_csv
from ds_prompt.transfer.prompt_set import as_list, common_backbone, load_prompt_set, recorded_family


# ---- embedding similarity ------------------------------------------------------------------------------------
def _same_shape(p1: torch.Tensor, p2: torch.Tensor, metric: str) -> None:
    if p1.shape != p2.shape:
        raise UserError(f"--metric {metric} compares flattened prompts but they have shapes {tuple(p1.shape)} "
                        f"and {tuple(p2.shape)}: use {metric}_token or on")


def _same_width(p1: torch.Tensor, p2: torch.Tensor, metric: str) -> None:
    if p1.shape[-1] != p2.shape[-1]:
        raise UserError(f"--metric {metric} needs prompts of one width but they have d={p1.shape[-1]} and "
                        f"d={p2.shape[-1]}: map one with `ds-prompt transfer projector apply`")


def cosine(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """cos(p1, p2) of the flattened [L, d] prompts."""
    _same_shape(p1, p2, "cos")
    return F.cosine_similarity(p1.double().flatten(), p2.double().flatten(), dim=0).item()


def cosine_token(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """Mean over all token pairs (i, j) of cos(P1_i, P2_j); P1 [L1, d], P2 [L2, d]."""
    _same_width(p1, p2, "cos_token")
    return (F.normalize(p1.double(), dim=-1) @ F.normalize(p2.double(), dim=-1).T).mean().item()


def euclidean(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """1 / (1 + ||p1 - p2||) of the flattened prompts."""
    _same_shape(p1, p2, "euc")
    return 1.0 / (1.0 + (p1.double() - p2.double()).norm().item())


def euclidean_token(p1: torch.Tensor, p2: torch.Tensor) -> float:
    """1 / (1 + mean over token pairs (i, j) of ||P1_i - P2_j||)."""
    _same_width(p1, p2, "euc_token")
    return 1.0 / (1.0 + torch.cdist(p1.double(), p2.double()).mean().item())


EMBEDDING_INDICATORS = {"cos": cosine, "cos_token": cosine_token, "euc": euclidean, "euc_token": euclidean_token}
METRICS = (*EMBEDDING_INDICATORS, "on")


def parse_metrics(metric) -> list[str]:
    """'all', one name, or a comma list -> metric names in METRICS order."""
    names = list(METRICS) if as_list(metric) == ["all"] else as_list(metric)
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown --metric {','.join(unknown) or repr(metric)}: use all or any of "
                        f"{', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


# ---- activated neurons ---------------------------------------------------------------------------------------
def neuron_masks(activations: dict[str, torch.Tensor], per_token: bool = True) -> dict[str, torch.Tensor]:
    """{layer: activations [rows, d_ff]} -> {layer: bool mask}.

    per_token=True: m = 1[a > 0] per row ([rows, d_ff]; rows = samples at one position). per_token=False (rows
    are all tokens of a probe of any length): a neuron is active when positive on at least half the rows, [1, d_ff].
    """
    if per_token:
        return {name: activation_mask(acts) for name, acts in activations.items()}
    out = {}
    for name, acts in activations.items():
        count, _ = activation_stats(acts)
        out[name] = (2 * count >= max(acts.shape[0], 1)).unsqueeze(0)
    return out


def activated_neuron_overlap(m1: dict[str, torch.Tensor], m2: dict[str, torch.Tensor],
                             layers: list[str] | None = None) -> float:
    """ON = |m1 AND m2| / sqrt(|m1| |m2|) over `layers` (default all); 0 when either mask is empty."""
    layers = list(m1) if layers is None else layers
    if set(layers) - set(m1) or set(layers) - set(m2):
        raise UserError(f"neuron masks cover different layers ({len(m1)} vs {len(m2)}): compare prompts on one model")
    both = ones1 = ones2 = 0
    for name in layers:
        a, b = m1[name], m2[name]
        if a.shape != b.shape:
            raise UserError(f"layer {name} masks have shapes {tuple(a.shape)} and {tuple(b.shape)}: probe both "
                            f"prompts with the same inputs")
        both += int((a & b).sum())
        ones1 += int(a.sum())
        ones2 += int(b.sum())
    return both / math.sqrt(ones1 * ones2) if ones1 and ones2 else 0.0


def on_windows(m1: dict[str, torch.Tensor], m2: dict[str, torch.Tensor], window: int = 3) -> list[tuple]:
    """[(start, end, ON over layers [start, end))] for start = 0, 1, ... (the last windows may be shorter
    only when the model has fewer than `window` layers)."""
    layers = list(m1)
    if window < 1:
        raise UserError(f"--window {window} must be >= 1")
    width = min(window, len(layers))
    return [(s, s + width, activated_neuron_overlap(m1, m2, layers[s:s + width]))
            for s in range(len(layers) - width + 1)]


@dataclass
class NeuronProbe:
    """What the frozen model is fed to find a prompt's activated neurons.

    samples=0: one row [prompt; bos] (REFERENCE §1; MLM: [prompt; bos; mask], so the mask slot exists).
    samples=k: [prompt; task text] for k examples of `task`'s eval split (the task template, mask slot
    included). position: "score" (the family's scoring position, see `activations`), an index in the prompted
    sequence (0 = the first prompt token), or None: every token, a neuron counting as active when positive on
    at least half of them. seq2seq_part: T5 FFNs to use (decoder at the first decoding step, encoder, or both).
    neuron: "product" or "gate" (gated FFNs, see `activations`).
    """
    task: str | None = None
    data_dir: str | None = None
    samples: int = 0
    position: int | str | None = SCORE
    seq2seq_part: str = "decoder"
    max_length: int = 128
    neuron: str = "product"


def bos_id(tokenizer) -> int:
    """The token standing for "<s>" after the prompt: bos, else cls, else eos."""
    for token_id in (tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise UserError("the tokenizer has no bos/cls/eos token to follow the prompt: use --samples N --task T")


def probe_batch(backbone, probe: NeuronProbe, prompt_length: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / score_index for `probe` (identical for every prompt up to `prompt_length`)."""
    if probe.samples <= 0:
        tokens = [bos_id(backbone.tokenizer)]
        if backbone.family is Family.MLM:  # the scoring position of a masked LM is a mask slot
            tokens.append(backbone.tokenizer.mask_token_id)
        ids = torch.tensor([tokens])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "score_index": torch.tensor([len(tokens) - 1])}
    if not probe.task:
        raise UserError(f"--samples {probe.samples} feeds task text: pass --task T (and --data_dir)")
    task = get_task(probe.task)
    examples = load_examples(task, "eval", probe.data_dir, limit=probe.samples, seed=0)
    encoder = TemplateEncoder(task, backbone.tokenizer, backbone.family, probe.max_length, prompt_length)
    batch = collate([encoder.encode(e) for e in examples], backbone.tokenizer.pad_token_id,
                    backbone.family is Family.CAUSAL)
    batch.pop("labels")
    return batch


class NeuronRecorder:
    """The frozen backbone with a swappable prompt: `masks(prompt)` -> {layer: bool mask} for a NeuronProbe.

    With a DeepSpeed config (e.g. zero3_cpu) the model is wrapped in an inference engine, weights partitioned;
    every rank must then call `masks` with the same prompts.
    """

    def __init__(self, backbone, probe: NeuronProbe, prompt_length: int, deepspeed: str | None = None):
        self.probe, self.device = probe, ds_setup.device()
        self.prompt = FixedPrompt(torch.zeros(1, backbone.d_model))
        model = PromptedModel(backbone.model, backbone.family, self.prompt, nn.Identity())
        if deepspeed:
            config = ds_setup.fill_ds_config(ds_setup.load_ds_config(deepspeed), dist.world_size(), 1, 0.0,
                                             dist.world_size(), backbone.dtype)
            model, _, _ = ds_setup.initialize_engine(model, config, None, None)
        self.model = model.to(self.device) if not deepspeed else model
        self.batch = {k: v.to(self.device) for k, v in probe_batch(backbone, probe, prompt_length).items()}
        self.d_model = backbone.d_model
        self.per_token = per_token_position(backbone.family, probe.position)

    def masks(self, prompt: torch.Tensor) -> dict[str, torch.Tensor]:
        check_prompt_fits(prompt, self.d_model, "for activated neurons")
        self.prompt.set(prompt.to(self.device))
        acts = prompted_ffn_activations(self.model, self.batch["input_ids"], self.batch["attention_mask"],
                                        self.batch["score_index"], position=self.probe.position,
                                        seq2seq_part=self.probe.seq2seq_part, neuron=self.probe.neuron)
        return neuron_masks(acts, per_token=self.per_token)


# ---- tables --------------------------------------------------------------------------------------------------
def indicator_rows(prompts, metrics: list[str], recorder: NeuronRecorder | None = None,
                   window: int = 3) -> tuple[list[dict], list[dict]]:
    """(rows {source, target, metric, value} over all ordered prompt pairs, ON window rows
    {source, target, start, end, value}). `prompts` are `library.PromptRef`s; ON needs a `recorder`."""
    rows, windows = [], []
    masks = {p.name: recorder.masks(p.tensor) for p in prompts} if "on" in metrics else {}
    for src in prompts:
        for tgt in prompts:
            for metric in metrics:
                value = (activated_neuron_overlap(masks[src.name], masks[tgt.name]) if metric == "on"
                         else EMBEDDING_INDICATORS[metric](src.tensor, tgt.tensor))
                rows.append({"source": src.name, "target": tgt.name, "metric": metric, "value": value})
            if masks:
                windows += [{"source": src.name, "target": tgt.name, "start": s, "end": e, "value": v}
                            for s, e, v in on_windows(masks[src.name], masks[tgt.name], window)]
    return rows, windows


def spearman_against(rows: list[dict], matrix: list[dict], include_self: bool = False) -> list[dict]:
    """Spearman correlation of each indicator with transfer accuracy over the (source, target) pairs present
    in both tables (indicator target = the prompt trained on the matrix's target task).

    Returns [{metric, spearman, p_value, n, mean_per_target}]: `spearman` pools all pairs; `mean_per_target` is
    the mean over target tasks of the correlation across sources (targets with >= 3 sources).
    """
    from scipy.stats import spearmanr
    accuracy = {(r["source"], r["target"]): float(r["accuracy"]) for r in matrix}
    out = []
    for metric in dict.fromkeys(r["metric"] for r in rows):
        pairs = [(r["source"], r["target"], float(r["value"]), accuracy[(r["source"], r["target"])])
                 for r in rows if r["metric"] == metric and (r["source"], r["target"]) in accuracy
                 and (include_self or r["source"] != r["target"])]
        rho, p = (spearmanr([x[2] for x in pairs], [x[3] for x in pairs]) if len(pairs) >= 3
                  else (float("nan"), float("nan")))
        per_target = []
        for target in dict.fromkeys(x[1] for x in pairs):
            sub = [x for x in pairs if x[1] == target]
            if len(sub) >= 3:
                per_target.append(spearmanr([x[2] for x in sub], [x[3] for x in sub])[0])
        per_target = [r for r in per_target if not math.isnan(r)]
        out.append({"metric": metric, "spearman": float(rho), "p_value": float(p), "n": len(pairs),
                    "mean_per_target": sum(per_target) / len(per_target) if per_target else float("nan")})
    if not any(r["n"] for r in out):
        raise UserError("no (source, target) pair of the indicators appears in --against: name prompts by task "
                        "(the prompt.json 'task') in both commands")
    return out


# ---- the `ds-prompt transfer indicators` workflow ------------------------------------------------------------
def compute_indicators(prompts, metric="all", output_dir: str = "runs/indicators", model: str | None = None,
                       against: str | None = None, probe: NeuronProbe | None = None, window: int = 3,
                       deepspeed: str | None = None, dtype: str = "auto", include_self: bool = False) -> dict:
    """Indicators between every ordered pair of `prompts`; writes indicators.csv (source,target,metric,value),
    on_windows.csv when ON is asked for, and correlation.csv with --against matrix.csv. Returns the tables."""
    metrics = parse_metrics(metric)
    refs = load_prompt_set(prompts)
    matrix = read_csv(against, ("source", "target", "accuracy")) if against else None
    for i, row in enumerate(matrix or [], start=2):
        try:
            value = float(row["accuracy"])
        except (TypeError, ValueError):
            value = float("nan")
        if not math.isfinite(value):
            raise UserError(f"--against {against} line {i}: accuracy {row['accuracy']!r} is not a number: pass the "
                            f"matrix.csv written by `ds-prompt transfer matrix`")
    recorder = None
    if "on" in metrics:
        ds_setup.init_distributed()
        backbone = load_model_for(common_backbone(refs, model), recorded_family(refs, model), dtype)
        recorder = NeuronRecorder(backbone, probe or NeuronProbe(), max(p.tensor.shape[0] for p in refs), deepspeed)
    rows, windows = indicator_rows(refs, metrics, recorder, window)
    result = {"indicators": rows, "on_windows": windows}
    dist.on_rank0(write_csv, f"{output_dir}/indicators.csv", rows, ("source", "target", "metric", "value"))
    if windows:
        dist.on_rank0(write_csv, f"{output_dir}/on_windows.csv", windows, ("source", "target", "start", "end", "value"))
    if matrix is not None:
        result["correlation"] = spearman_against(rows, matrix, include_self)
        dist.on_rank0(write_csv, f"{output_dir}/correlation.csv", result["correlation"],
                      ("metric", "spearman", "p_value", "n", "mean_per_target"))
    return result
