"""Distributed evaluation: accuracy of class logits over an encoded split."""
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
    for s in range(0, per_rank, batch_size):
        idx, w = mine_sorted[s:s + batch_size], torch.tensor(weights[s:s + batch_size], dtype=torch.float64)
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id, left_pad).items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch["score_index"]).float()
        loss = F.cross_entropy(logits, batch["labels"], reduction="none").double().cpu()
        correct = (logits.argmax(-1) == batch["labels"]).double().cpu()
        totals += torch.stack([(correct * w).sum(), (loss * w).sum(), w.sum()])
    all_reduce_sum(totals)
    model.train(was_training)
    n = max(totals[2].item(), 1.0)
    return {"accuracy": totals[0].item() / n, "loss": totals[1].item() / n, "n": int(totals[2].item())}
