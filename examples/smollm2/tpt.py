"""Transferable prompt tuning (TPT) on SmolLM2-135M: mr from a random init, from the sst2 prompt (similar
task) and from the agnews prompt (dissimilar task), 3 seeds each, same data order and budget per seed.

For each seed the random-init run's final accuracy is the target; the table gives the steps and FLOPs each
init needed to first reach it (evaluated every EVAL_EVERY steps on <= EVAL examples; FLOPs = 4 N tokens, as
`ds-prompt transfer speedup`). Writes docs/results/tpt.csv (one row per run), tpt.png (mean learning curves).

    python examples/smollm2/tpt.py                 # needs pt_tasks.py --phase first
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import MODEL, RESULTS, RUNS, SEEDS, log, meta_json, train, write_csv  # noqa: E402
from pt_tasks import prompt_dir  # noqa: E402

TARGET, STEPS, EVAL_EVERY, EVAL = "mr", 150, 15, 500
INITS = {"random": None, "sst2": "sst2", "agnews": "agnews"}


def run(init: str, seed: int) -> dict:
    source = INITS[init]
    extra = () if source is None else ("--init", f"file:{prompt_dir(source)}")
    return train(RUNS / "tpt" / f"{init}-s{seed}", TARGET, seed, steps=STEPS, eval_every=EVAL_EVERY,
                 eval_limit=EVAL, extra=extra)


def flops_per_token() -> float:
    from ds_prompt.models.backbone import load_backbone
    from ds_prompt.transfer.speedup import matmul_params
    return 4.0 * matmul_params(load_backbone(MODEL).model)


def plot(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for init, per_seed in curves.items():
        steps = [s for s, _ in per_seed[0]]
        mean = [sum(c[i][1] for c in per_seed) / len(per_seed) for i in range(len(steps))]
        ax.plot(steps, mean, marker="o", ms=3, label=f"init: {init}" + (" prompt" if init != "random" else ""))
    ax.set_xlabel("step")
    ax.set_ylabel(f"{TARGET} accuracy (mean of {len(SEEDS)} seeds)")
    ax.set_title(f"TPT on {MODEL}: {TARGET} from transferred vs random init")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from ds_prompt.transfer.speedup import learning_curve, steps_to_reach
    for seed in SEEDS:
        for init in INITS:
            run(init, seed)
    per_token = flops_per_token()
    rows, curves = [], {init: [] for init in INITS}
    for seed in SEEDS:
        metrics = {init: run(init, seed) for init in INITS}
        target = metrics["random"]["accuracy"]
        for init, m in metrics.items():
            curve = learning_curve(m)
            curves[init].append(curve)
            steps = steps_to_reach(curve, target)
            flops_per_step = per_token * m["tokens"] / m["steps"]
            rows.append({"init": init, "seed": seed, "accuracy_at_init": round(m["accuracy_before"], 4),
                         "final_accuracy": round(m["accuracy"], 4), "target_accuracy": round(target, 4),
                         "steps_to_target": "" if steps is None else steps,
                         "tflops_to_target": "" if steps is None else round(steps * flops_per_step / 1e12, 2),
                         "max_steps": STEPS, "eval_every": EVAL_EVERY, "n_eval": m["eval_n"]})
    write_csv(RESULTS / "tpt.csv", rows)
    plot(curves, RESULTS / "tpt.png")
    meta_json("tpt", target=TARGET, steps=STEPS, eval_every=EVAL_EVERY, eval_limit=EVAL, seeds=list(SEEDS),
              sources="pt_tasks seed 42 prompts", flops="4 x matmul params x tokens")
    log("tpt done")


if __name__ == "__main__":
    main()
