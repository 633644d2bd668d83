"""Distributed evaluation of class logits over an encoded split: accuracy, loss, F1 and Matthews correlation.

Every metric comes from one confusion matrix summed across ranks: accuracy; F1 of class 1 for two classes
(GLUE's MRPC/QQP convention: the second label is the positive one), macro-F1 for more; Matthews correlation
in its multiclass form (Gorodkin 2004, as scikit-learn computes it; 0 when undefined). A task's `metric`
names which one is its headline (TaskSpec.metric); all are always reported.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ds_prompt.data.encoding import Encoded, collate
from ds_prompt.dist import all_reduce_sum, rank, world_size


@torch.no_grad()
def evaluate(model, encoded: list[Encoded], batch_size: int, pad_id: int, left_pad: bool,
             device: torch.device) -> dict:
    """{"accuracy", "loss", "n"} over `encoded`, sharded across ranks.

    Every rank runs the same number of forwards (short shards are padded with weight-0 rows) because ZeRO-3
    gathers parameters collectively inside each forward.
    """
    was_training = model.training
    model.eval()
    world, me = world_size(), rank()
    mine = list(range(me, len(encoded), world))
    per_rank = math.ceil(len(encoded) / world)
    mine_sorted = sorted(mine, key=lambda i: len(encoded[i].input_ids))
    weights = [1.0] * len(mine_sorted) + [0.0] * (per_rank - len(mine_sorted))
    mine_sorted += [mine_sorted[0] if mine_sorted else 0] * (per_rank - len(mine_sorted))
    totals = torch.zeros(3, dtype=torch.float64)  # correct, loss sum, count
    confusion = None  # [gold, predicted] weighted counts
    for s in range(0, per_rank, batch_size):
        idx, w = mine_sorted[s:s + batch_size], torch.tensor(weights[s:s + batch_size], dtype=torch.float64)
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id, left_pad).items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch["score_index"]).float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="none").double().cpu()
        predicted, gold = logits.argmax(-1).cpu(), batch["labels"].cpu()
        correct = (predicted == gold).double()
        totals += torch.stack([(correct * w).sum(), (loss * w).sum(), w.sum()])
        if confusion is None:
            confusion = torch.zeros(logits.shape[-1], logits.shape[-1], dtype=torch.float64)
        confusion.index_put_((gold, predicted), w, accumulate=True)
    all_reduce_sum(totals)
    if confusion is not None:
        all_reduce_sum(confusion)
    model.train(was_training)
    n = max(totals[2].item(), 1.0)
    scores = class_metrics(confusion) if confusion is not None else {"f1": 0.0, "matthews": 0.0}
    return {"accuracy": totals[0].item() / n, "loss": totals[1].item() / n, "n": int(totals[2].item()), **scores}


def class_metrics(confusion: torch.Tensor) -> dict:
    """{"f1", "matthews"} of a [gold, predicted] confusion matrix (see the module docstring)."""
    c = confusion.double()
    tp = c.diag()
    predicted, gold, total = c.sum(0), c.sum(1), c.sum()
    f1_per_class = torch.where(predicted + gold > 0, 2 * tp / (predicted + gold), torch.zeros_like(tp))
    f1 = f1_per_class[1].item() if c.shape[0] == 2 else f1_per_class.mean().item()
    cov_xy = tp.sum() * total - (predicted * gold).sum()
    cov_xx = total ** 2 - (predicted ** 2).sum()
    cov_yy = total ** 2 - (gold ** 2).sum()
    denominator = (cov_xx * cov_yy).sqrt()
    matthews = (cov_xy / denominator).item() if denominator > 0 else 0.0
    return {"f1": f1, "matthews": matthews}
