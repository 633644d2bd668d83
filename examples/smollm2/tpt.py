"""Transferable prompt tuning (TPT) on SmolLM2-135M: mr from a random init (N(0, 0.02), the paper's
baseline), from sampled vocabulary embeddings (the init of this project's PT runs), from the sst2 prompt
(similar task) and from the agnews prompt (dissimilar task), 3 seeds each, same data order and budget.

For each seed the random-init run's final accuracy is the target; the table gives the steps and FLOPs each
init needed to first reach it (evaluated every EVAL_EVERY steps on <= EVAL examples; FLOPs = 4 N tokens, as
`ds-prompt transfer speedup`). A second target, the vocab-init run's final accuracy, asks the same of the
stronger baseline this project's PT runs use. Writes docs/results/tpt.csv (one row per run), tpt.png (mean
learning curves).

    python examples/smollm2/tpt.py                 # needs pt_tasks.py --phase first
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, RESULTS, RUNS, SEEDS, figure, finish_axes, log, meta_json, save_figure, train, write_csv  # noqa: E402
from pt_tasks import prompt_dir  # noqa: E402

TARGET, STEPS, EVAL_EVERY, EVAL = "mr", 150, 15, 500
INITS = {"random": "normal:0.02", "vocab": "vocab", "sst2": f"file:{prompt_dir('sst2')}",
         "agnews": f"file:{prompt_dir('agnews')}"}


def run(init: str, seed: int) -> dict:
    return train(RUNS / "tpt" / f"{init}-s{seed}", TARGET, seed, steps=STEPS, eval_every=EVAL_EVERY,
                 eval_limit=EVAL, init=INITS[init])


def flops_per_token() -> float:
    from ds_prompt.models.backbone import load_backbone
    from ds_prompt.transfer.speedup import matmul_params
    return 4.0 * matmul_params(load_backbone(MODEL).model)


def plot(curves: dict, path: Path) -> None:
    fig, ax = figure()
    for init, per_seed in curves.items():
        steps = [s for s, _ in per_seed[0]]
        mean = [sum(c[i][1] for c in per_seed) / len(per_seed) for i in range(len(steps))]
        ax.plot(steps, mean, marker="o", ms=3, label=f"init: {init}" + (" prompt" if init in ("sst2", "agnews")
                                                                        else ""))
    finish_axes(ax, "step", f"{TARGET} accuracy (mean of {len(SEEDS)} seed{'s' if len(SEEDS) > 1 else ''})",
                f"TPT on {MODEL}: {TARGET} from transferred vs random init")
    save_figure(fig, path)


def main() -> None:
    from ds_prompt.transfer.speedup import learning_curve, steps_to_reach
    for seed in SEEDS:
        for init in INITS:
            run(init, seed)
    per_token = flops_per_token()
    rows, curves = [], {init: [] for init in INITS}
    for seed in SEEDS:
        metrics = {init: run(init, seed) for init in INITS}
        target, vocab_target = metrics["random"]["accuracy"], metrics["vocab"]["accuracy"]
        for init, m in metrics.items():
            curve = learning_curve(m)
            curves[init].append(curve)
            steps, steps_vocab = steps_to_reach(curve, target), steps_to_reach(curve, vocab_target)
            flops_per_step = per_token * m["tokens"] / m["steps"]
            rows.append({"init": init, "seed": seed, "accuracy_at_init": round(m["accuracy_before"], 4),
                         "final_accuracy": round(m["accuracy"], 4), "target_accuracy": round(target, 4),
                         "steps_to_target": "" if steps is None else steps,
                         "tflops_to_target": "" if steps is None else round(steps * flops_per_step / 1e12, 2),
                         "vocab_target_accuracy": round(vocab_target, 4),
                         "steps_to_vocab_target": "" if steps_vocab is None else steps_vocab,
                         "max_steps": STEPS, "eval_every": EVAL_EVERY, "n_eval": m["eval_n"]})
    write_csv(RESULTS / "tpt.csv", rows)
    plot(curves, RESULTS / "tpt.png")
    meta_json("tpt", target=TARGET, steps=STEPS, eval_every=EVAL_EVERY, eval_limit=EVAL, seeds=list(SEEDS),
              sources="pt_tasks seed 42 prompts", flops="4 x matmul params x tokens")
    log("tpt done")


if __name__ == "__main__":
    main()
