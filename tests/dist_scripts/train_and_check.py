"""Run under torchrun/deepspeed: train via the library, then (every rank) compare the frozen backbone with a
freshly built copy and write a JSON verdict from rank 0. Args: <result.json> then `ds-prompt train` flags."""
import json
import sys

import torch

from ds_prompt import dist
from ds_prompt.cli import _strip_launcher_args
from ds_prompt.config import TrainConfig, build_config
from ds_prompt.models.backbone import load_backbone
from ds_prompt.recipes import prompt_tuning as trainer


def main():
    result_path, argv = sys.argv[1], _strip_launcher_args(sys.argv[2:])
    flags = {argv[i].lstrip("-"): argv[i + 1] for i in range(0, len(argv), 2)}
    cfg = build_config(TrainConfig, None, **flags)
    captured = {}
    original = trainer._finish

    def at_load(backbone):
        captured["partitioned_at_load"] = all(hasattr(p, "ds_id") for p in backbone.model.parameters())

    def finish(ctx, run, final, task):
        from ds_prompt.dist import gathered
        from ds_prompt.models.checkpointing import CheckpointedLayer
        from ds_prompt.models.ffn import layer_stacks
        for stack in layer_stacks(ctx.backbone.model):  # compare under the original parameter names
            stack.replace([m.layer if isinstance(m, CheckpointedLayer) else m for m in stack.layers])
        ref = dict(load_backbone(cfg.model, family=cfg.family, dtype="fp32",
                                 quantization=cfg.quantization).model.named_parameters())
        quantized = [p for p in ctx.backbone.model.parameters() if type(p).__name__ in ("Int8Params", "Params4bit")]
        captured["quantized_params"] = len(quantized)
        captured["quantized_partitioned"] = bool(quantized) and all(
            p.data.numel() == 0 and getattr(p, "ds_numel", 0) > 0 for p in quantized)
        unchanged = True
        for name, p in ctx.backbone.model.named_parameters():
            with gathered(p):
                unchanged &= torch.equal(p.detach().cpu(), ref[name].detach())
        captured["backbone_unchanged"] = bool(unchanged)
        captured["zero3_partitioned"] = any(hasattr(p, "ds_id") for p in ctx.backbone.model.parameters())
        return original(ctx, run, final, task)

    trainer._finish = finish
    metrics = trainer.train(cfg, model_transform=at_load)
    if dist.is_rank0():
        json.dump(dict(metrics, **captured, world_size=dist.world_size()), open(result_path, "w"))


if __name__ == "__main__":
    main()
