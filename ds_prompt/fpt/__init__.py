"""Fast Prompt Tuning (Huang, Qin et al., Findings EMNLP 2022): train the prompt through partial models
(fewer layers and/or FFN neurons) first, then through progressively larger ones, carrying the prompt and the
optimizer state across every expansion.

- `partial`: evenly_select_layers, PartialModelSpec, neuron_scores, apply_partial (in place, ZeRO-3 aware)
- `flops`: analytic FLOPs per step per family, flops_fraction
- `plan`: StagePlan / Stage from JSON/YAML, presets ld/fr/cr/pt
- `scheduler`: one DeepSpeed job per stage, ledger + resume, fpt_report.json
"""
from ds_prompt.fpt.flops import LengthStats, ModelShape, flops_fraction, step_flops
from ds_prompt.fpt.partial import PartialModelSpec, apply_partial, evenly_select_layers, neuron_scores, top_neurons
from ds_prompt.fpt.plan import Stage, StagePlan, load_plan, preset_plan
from ds_prompt.fpt.scheduler import run_fpt

__all__ = ["LengthStats", "ModelShape", "PartialModelSpec", "Stage", "StagePlan", "apply_partial",
           "evenly_select_layers", "flops_fraction", "load_plan", "neuron_scores", "preset_plan", "run_fpt",
           "step_flops", "top_neurons"]
