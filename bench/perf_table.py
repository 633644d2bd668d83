"""The README's performance table: every row measured by this script, written to docs/results/perf.csv.

    python -m bench.perf_table [--data_dir ../shared/data] [--only smollm2,mlm,...] [--rerun] [--render_only]

Rows (each one `bench.peft_compare` or `bench.train_overhead` process, run one after another, never two at
once): SmolLM2-135M (the packaged GGUF) on sst2 with all four systems (ds_prompt, PEFT, the plain-PyTorch floor,
ds_prompt with its shortcuts off), the 6-layer random-init BERT/GPT-2/T5 models on sst2 (same four systems),
and the CLI path against the engine path on SmolLM2. A row already in the CSV is kept (resumable) unless
--rerun. Each row records the command, date, and the machine's load average before it started: numbers taken
while something else ran are worthless on 2 cores, so run this on a quiet machine. The README block between
`<!-- perf:begin -->` and `<!-- perf:end -->` is rendered from the CSV.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "docs" / "results" / "perf.csv"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
STEPS = 40


def rows_spec(data_dir: str) -> dict[str, list[str]]:
    data = ["--task", "sst2", "--data_dir", data_dir]
    compare = [sys.executable, "-m", "bench.peft_compare", "--steps", str(STEPS), "--shortcuts", "both", *data]
    return {
        "smollm2": [*compare, "--model", "smollm2"],
        "mlm": [*compare, "--family", "mlm", "--size", "small"],
        "causal": [*compare, "--family", "causal", "--size", "small"],
        "seq2seq": [*compare, "--family", "seq2seq", "--size", "small"],
        "smollm2_cli": [sys.executable, "-m", "bench.train_overhead", "--model", "smollm2", "--steps", str(STEPS),
                        *data],
    }


SYSTEM = re.compile(r"(\w+)\s+tokens/s=([\d.]+) s/step=([\d.]+) gflops=([\d.]+) accuracy=([\d.]+) "
                    r"activation_mb=([\d.]+)")


def parse_compare(out: str) -> dict:
    row = {}
    for m in SYSTEM.finditer(out):
        name = m.group(1)
        row.update({f"{name}_tokens_per_s": m.group(2), f"{name}_s_per_step": m.group(3),
                    f"{name}_gflops": m.group(4), f"{name}_accuracy": m.group(5),
                    f"{name}_activation_mb": m.group(6)})
    for key in ("matmul_peak_gflops", "vs_floor_ratio", "tokens_per_s_ratio", "shortcut_speedup",
                "full_forward_vs_floor_ratio"):
        m = re.search(rf"^{key}=([\d.]+)", out, re.M)
        row[key] = m.group(1) if m else ""
    return row


def parse_overhead(out: str) -> dict:
    engine = re.search(r"^engine tokens/s=([\d.]+)", out, re.M)
    cli = re.search(r"^cli\s+tokens/s=([\d.]+)", out, re.M)
    ratio = re.search(r"^cli_vs_engine_ratio=([\d.]+)", out, re.M)
    return {"engine_tokens_per_s": engine.group(1), "cli_tokens_per_s": cli.group(1),
            "cli_vs_engine_ratio": ratio.group(1)}


def read_rows() -> dict[str, dict]:
    if not CSV.is_file():
        return {}
    with open(CSV, newline="") as f:
        return {r["row"]: r for r in csv.DictReader(f)}


def write_rows(rows: dict[str, dict]) -> None:
    CSV.parent.mkdir(parents=True, exist_ok=True)
    fields = []
    for r in rows.values():
        fields += [k for k in r if k not in fields]
    with open(CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows.values())


def _running_others() -> int:
    """Processes running or runnable right now, besides this one (from /proc/loadavg)."""
    try:
        return int(open("/proc/loadavg").read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        return -1


def measure(name: str, cmd: list[str]) -> dict:
    load = os.getloadavg()[0]
    print(f"[perf] {name}: {' '.join(cmd[1:])} (load {load:.1f})", flush=True)
    env = dict(os.environ, DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"[perf] {name} failed:\n{proc.stderr[-3000:]}")
    parsed = parse_overhead(proc.stdout) if name.endswith("_cli") else parse_compare(proc.stdout)
    shown = " ".join(a if " " not in a else repr(a) for a in ["python", *cmd[1:]])
    return {"row": name, "date": dt.date.today().isoformat(), "load_before": f"{load:.1f}",
            "running_before": _running_others(),
            "cpus": os.cpu_count(), "command": shown.replace(str(ROOT) + "/", ""), **parsed}


def _f(row: dict, key: str, fmt: str = ".0f") -> str:
    value = row.get(key, "")
    return format(float(value), fmt) if value not in ("", None) else "n/a"


def render(rows: dict[str, dict]) -> str:
    labels = {"smollm2": "SmolLM2-135M (GGUF, 30 layers, d 576)", "mlm": "random 6-layer BERT (d 384)",
              "causal": "random 6-layer GPT-2 (d 384)", "seq2seq": "random 6-layer T5 (d 384)"}
    lines = [f"Measured by `python -m bench.perf_table` (rows in `docs/results/perf.csv`, each with its command, date "
             f"and the load average before it ran): sst2 from `../shared/data`, batch 16, prompt 20, max length 128, "
             f"AdamW, {STEPS} timed steps per system after one warm-up step, all systems alternating in one process, "
             f"fp32 on the 2-core CPU machine. tokens/s counts prompt + non-pad tokens; GFLOPS is the full-forward "
             f"ledger's useful work per second (so the shortcuts raise it above what is computed). \"load before\" is "
             f"the 1-minute load average when the row started; rows run back to back, so it includes the previous "
             f"row's own bench (nothing else ran).", "",
             "| model | ds_prompt tok/s | floor tok/s | PEFT tok/s | **vs floor** | **vs PEFT** "
             "| shortcuts off: vs floor "
             "| GFLOPS ds_prompt / floor (matmul peak) | activation MB ds_prompt / shortcuts off / PEFT "
             "| accuracy after 40 steps ds_prompt / floor / PEFT | date, load before |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, label in labels.items():
        r = rows.get(key)
        if r is None:
            lines.append(f"| {label} | not measured yet | | | | | | | | | |")
            continue
        lines.append(
            f"| {label} | {_f(r, 'ds_prompt_tokens_per_s')} | {_f(r, 'floor_tokens_per_s')} | "
            f"{_f(r, 'peft_tokens_per_s')} | **{_f(r, 'vs_floor_ratio', '.2f')}x** | "
            f"**{_f(r, 'tokens_per_s_ratio', '.2f')}x** | {_f(r, 'full_forward_vs_floor_ratio', '.2f')}x | "
            f"{_f(r, 'ds_prompt_gflops')} / {_f(r, 'floor_gflops')} ({_f(r, 'matmul_peak_gflops')}) | "
            f"{_f(r, 'ds_prompt_activation_mb')} / {_f(r, 'ds_prompt_full_activation_mb')} / "
            f"{_f(r, 'peft_activation_mb')} | {_f(r, 'ds_prompt_accuracy', '.3f')} / "
            f"{_f(r, 'floor_accuracy', '.3f')} / "
            f"{_f(r, 'peft_accuracy', '.3f')} | {r['date']}, {r['load_before']} |")
    cli = rows.get("smollm2_cli")
    lines.append("")
    if cli:
        lines.append(f"CLI path vs engine path on SmolLM2 (`python -m bench.train_overhead`, same steps, "
                     f"checkpoints every 25 steps, TensorBoard, progress bar): "
                     f"{_f(cli, 'cli_tokens_per_s')} vs {_f(cli, 'engine_tokens_per_s')} tokens/s, "
                     f"**{_f(cli, 'cli_vs_engine_ratio', '.3f')}** ({cli['date']}, load before {cli['load_before']}).")
    else:
        lines.append("CLI path vs engine path (`python -m bench.train_overhead`): not measured yet.")
    return "\n".join(lines)


def render_readme(rows: dict[str, dict]) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{render(rows)}\n{END}{tail}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--only", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--rerun", action="store_true", help="measure rows already in the CSV again")
    parser.add_argument("--render_only", action="store_true")
    args = parser.parse_args(argv)
    rows = read_rows()
    if not args.render_only:
        spec = rows_spec(args.data_dir)
        wanted = args.only.split(",") if args.only else list(spec)
        unknown = sorted(set(wanted) - set(spec))
        if unknown:
            parser.error(f"unknown rows {unknown}: choose from {', '.join(spec)}")
        for name in wanted:
            if name in rows and not args.rerun:
                continue
            rows[name] = measure(name, spec[name])
            write_rows(rows)
    render_readme(rows)
    print(render(rows))


if __name__ == "__main__":
    main()
