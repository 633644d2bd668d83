"""SPT: memory-bank retrieval (gradients, per-example retrieval, bank of one == prompt tuning), bank artifacts,
the task mixture, and the recipe end to end (CLI, modes, resume, init from a bank, 2-rank ZeRO-3)."""
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ds_prompt.cli import main
from ds_prompt.data.loading import Example
from ds_prompt.data.tasks import get_task
from ds_prompt.errors import UserError
from ds_prompt.models.backbone import load_backbone
from ds_prompt.models.family import Family
from ds_prompt.models.prompted import PromptedModel, build_head, new_soft_prompt
from ds_prompt.spt.bank import (
    BANK_FILE,
    BankConfig,
    MemoryBank,
    build_spt_model,
    init_spt_prompt,
    load_bank,
    load_state,
    prompt_tensors,
    save_bank,
)
from ds_prompt.spt.mixture import MixturePlan, Sample, TaskSuite, micro_batches, mixing_rates
from tests.helpers import encode_texts_fn

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not all((DATA / t).is_dir() for t in ("rte", "mrpc", "qnli", "mr", "snli")),
                                reason="shared/data not available")

TEXTS = {"text": [("a warm , funny and moving film",), ("dull",), ("the plot never comes together at all",)],
         "pair": [("A man sleeps on a couch.", "A person rests."), ("Kids play ball.", "Nobody is playing outside.")]}


def _examples(spec):
    rows = TEXTS["text"] if spec.text_fields == ("text",) else TEXTS["pair"]
    return [Example(t, i % spec.num_labels) for i, t in enumerate(rows)]


def _spt(arch, names=("sst2", "rte", "snli"), num_seen=2, **bank):
    """(backbone, model, suite) of a tiny SPT model; the first `num_seen` tasks are seen."""
    bb = load_backbone(f"tiny:{arch}", dtype="fp32")
    specs = [get_task(n) for n in names]
    cfg = BankConfig(bb.d_model, **dict(dict(size=6, memory_length=3, top_k=2, task_prompt_length=2), **bank),
                     num_tasks=num_seen)
    model = build_spt_model(bb, cfg, specs)
    instructions = [text for s in specs[:num_seen] for text in s.instructions]
    init_spt_prompt(model.prompt, "normal:0.5", "instructions", bb.tokenizer, instructions, seed=0)
    suite = TaskSuite.build(specs, bb.tokenizer, bb.family, 64, cfg.prompt_length, [_examples(s) for s in specs],
                            [[] for _ in specs], bb.family is Family.CAUSAL)
    return bb, model, suite


MIXED = [Sample(0, 0, 1), Sample(1, 0, 0), Sample(2, 1, 1), Sample(0, 2, 2), Sample(1, 1, 1)]


@pytest.mark.parametrize("arch,query_source", [("bert", "instruction"), ("gpt2", "instruction+input"),
                                               ("bert_encoder", "instruction"), ("t5", "instruction+input")])
def test_mixed_batch_retrieval_equals_examples_one_by_one(arch, query_source):
    _, model, suite = _spt(arch, query_source=query_source, unseen_prompt="mean")
    with torch.no_grad():
        batch = suite.collate(MIXED)
        labels = batch.pop("labels")
        together = model(**batch)
        for row, sample in enumerate(MIXED):
            single = suite.collate([sample])
            single.pop("labels")
            alone = model(**single)[0]
            classes = suite.tasks[sample.task].spec.num_labels
            torch.testing.assert_close(together[row, :classes], alone[:classes], atol=2e-5, rtol=1e-4)
            assert torch.isinf(together[row, classes:]).all()
    _, indices = model.prompt.retrieve(instruction_ids=batch["instruction_ids"],
                                       instruction_mask=batch["instruction_mask"], query_input_ids=batch["input_ids"],
                                       query_input_mask=batch["attention_mask"])
    assert len({tuple(r) for r in indices.tolist()}) > 1, "every row retrieved the same slots"
    assert F.cross_entropy(together, labels).isfinite()


def _reference_memory(q, keys, values, k, temperature, cosine, concat):
    """Dense torch reference: all scores, top-k, softmax over the top-k scores, weighted sum / concat."""
    qn, kn = (F.normalize(q, dim=-1), F.normalize(keys, dim=-1)) if cosine else (q, keys)
    scores = qn @ kn.T
    top = scores.topk(k, dim=1).indices
    w = torch.softmax(scores.gather(1, top) / temperature, dim=1)
    picked = values[top]
    if concat:
        return (k * w[..., None, None] * picked).flatten(1, 2)
    return (w[..., None, None] * picked).sum(1)


@pytest.mark.parametrize("similarity,combine", [("cosine", "weighted"), ("dot", "weighted"), ("cosine", "concat"),
                                                ("dot", "concat")])
def test_retrieval_gradients_reach_keys_and_values(similarity, combine):
    torch.manual_seed(0)
    cfg = BankConfig(16, size=7, memory_length=3, top_k=3, similarity=similarity, combine=combine, temperature=0.5)
    bank = MemoryBank(cfg)
    with torch.no_grad():
        bank.keys.normal_()
        bank.values.normal_()
    query = torch.randn(4, 16, requires_grad=True)
    memory, weights, indices = bank(query)
    assert memory.shape == (4, cfg.memory_tokens, 16) and torch.allclose(weights.sum(1), torch.ones(4))
    target = torch.randn_like(memory)
    (memory * target).sum().backward()

    keys = bank.keys.detach().clone().requires_grad_(True)
    values = bank.values.detach().clone().requires_grad_(True)
    q = query.detach().clone().requires_grad_(True)
    expected = _reference_memory(q, keys, values, 3, 0.5, similarity == "cosine", combine == "concat")
    torch.testing.assert_close(memory, expected)
    (expected * target).sum().backward()
    for got, want in ((bank.keys.grad, keys.grad), (bank.values.grad, values.grad), (query.grad, q.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # same math, another summation order
    used = torch.zeros(7, dtype=torch.bool)
    used[indices.flatten()] = True
    assert (bank.keys.grad[used].abs().sum(1) > 0).all() and (bank.values.grad[used].abs().sum((1, 2)) > 0).all()
    assert (bank.keys.grad[~used] == 0).all() and (bank.values.grad[~used] == 0).all()


def test_query_projection_and_task_prompts_train():
    _, model, suite = _spt("bert", query_projection="mlp")
    batch = suite.collate(MIXED)
    F.cross_entropy(model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"]).backward()
    grads = {n: p.grad for n, p in model.prompt.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), sorted(grads)
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_bank_of_one_with_k1_is_plain_prompt_tuning(arch):
    bb, model, suite = _spt(arch, names=("sst2",), num_seen=1, size=1, top_k=1, memory_length=4, task_prompt="none")
    task = get_task("sst2")
    plain = PromptedModel(bb.model, bb.family, new_soft_prompt(4, bb.d_model, model.prompt.bank.values[0].detach()),
                          build_head("auto", bb.model, bb.tokenizer, bb.family, task, encode_texts_fn(bb)))
    batch = suite.collate([Sample(0, i, i % 3) for i in range(3)])
    labels = batch.pop("labels")
    spt_logits = model(**batch)
    plain_logits = plain(batch["input_ids"], batch["attention_mask"], batch["score_index"])
    torch.testing.assert_close(spt_logits, plain_logits)
    F.cross_entropy(spt_logits, labels).backward()
    F.cross_entropy(plain_logits, labels).backward()
    torch.testing.assert_close(model.prompt.bank.values.grad[0], plain.prompt.weight.grad)
    assert (model.prompt.bank.keys.grad == 0).all()  # one retrieved prompt has weight 1 whatever its key


def test_bank_save_load_roundtrip(tmp_path):
    bb, model, suite = _spt("bert", query_projection="mlp", similarity="dot", combine="concat")
    meta = dict(model.prompt.cfg.to_json(), backbone="tiny:bert", tasks=["sst2", "rte"], heldout=["snli"],
                instructions={"sst2": list(get_task("sst2").instructions)})
    save_bank(tmp_path, prompt_tensors(model.prompt), meta)
    saved = json.loads((tmp_path / "bank.json").read_text())
    for key, value in dict(size=6, memory_length=3, d_model=32, top_k=2, similarity="dot", combine="concat",
                           pooling="mean", backbone="tiny:bert", tasks=["sst2", "rte"]).items():
        assert saved[key] == value, key
    tensors, meta2 = load_bank(tmp_path)
    assert tensors["bank.keys"].shape == (6, 32) and tensors["bank.values"].shape == (6, 3, 32)
    assert tensors["task_prompts.weight"].shape == (2, 2, 32)

    _, fresh, _ = _spt("bert", query_projection="mlp", similarity="dot", combine="concat")
    with torch.no_grad():
        for p in fresh.prompt.parameters():
            p.zero_()
    load_state(fresh.prompt, tensors, str(tmp_path))
    assert BankConfig.from_json(meta2) == model.prompt.cfg
    batch = {k: v for k, v in suite.collate(MIXED).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch), model(**batch))

    _, other, _ = _spt("bert", size=5)
    with pytest.raises(UserError, match="bank.keys"):
        load_state(other.prompt, tensors, str(tmp_path))
    (tmp_path / BANK_FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_bank(tmp_path)


def test_mixing_rates():
    assert mixing_rates([100, 300], "proportional") == pytest.approx([0.25, 0.75])
    assert mixing_rates([100, 400], "temperature", temperature=2.0) == pytest.approx([1 / 3, 2 / 3])
    assert mixing_rates([100, 300], "proportional", cap=100) == pytest.approx([0.5, 0.5])
    with pytest.raises(UserError, match="--mixing 'uniform'"):
        mixing_rates([1, 2], "uniform")


def test_mixture_plan_is_world_size_independent_and_resumable():
    sizes, rates = [10, 25, 7], mixing_rates([10, 25, 7], "temperature")
    plan = MixturePlan(sizes, [2, 3, 1], rates, global_batch=8, seed=3)
    steps = [plan.global_batch_at(s) for s in range(12)]
    assert MixturePlan(sizes, [2, 3, 1], rates, 8, 3).global_batch_at(9) == steps[9]  # resume mid-run
    assert plan.global_batch_at(4) == steps[4]                                        # and going back
    drawn = [s for batch in steps for s in batch]
    for t, n in enumerate(sizes):
        firsts = [s.index for s in drawn if s.task == t][:n]
        assert len(set(firsts)) == len(firsts)  # no repeats within a task's pass over its examples
    assert {s.instruction for s in drawn if s.task == 1} == {0, 1, 2}
    assert {s.instruction for s in drawn if s.task == 2} == {0}
    length = lambda s: (s.task * 7 + s.index) % 11  # noqa: E731
    for world, accum in ((1, 1), (2, 2), (4, 1), (8, 1)):
        parts = [m for r in range(world) for m in micro_batches(steps[0], world, r, accum, length)]
        assert len(parts) == world * accum and all(len(m) == 8 // (world * accum) for m in parts)
        assert sorted(s for m in parts for s in m) == sorted(steps[0])


def test_every_example_is_drawn_before_any_repeats():
    plan = MixturePlan([10], [1], [1.0], global_batch=5, seed=0)
    first_epoch = plan.global_batch_at(0) + plan.global_batch_at(1)
    assert sorted(s.index for s in first_epoch) == list(range(10))


# ------------------------------------------------------------------------------------------------ recipe

BASE = ["--model", "tiny:bert", "--batch_size", "8", "--bank_size", "4", "--memory_length", "2",
        "--task_prompt_length", "2", "--progress", "False", "--log_every", "1", "--eval_limit", "8"]
DATA_FLAGS = ["--data_dir", str(DATA), "--train_limit", "32"]
MULTI = ["--tasks", "rte,mrpc", "--heldout", "mr,snli"] + DATA_FLAGS  # small files: quick to read


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, [ln for ln in captured.err.splitlines() if ln.startswith("ds-prompt: error")]


@needs_data
def test_cli_train_evaluate_inspect(tmp_path, capsys):
    out = tmp_path / "spt"
    code, printed, errors = _run(["spt", "train"] + BASE + MULTI + ["--output_dir", str(out), "--max_steps", "4",
                                                                     "--save_every", "0"], capsys)
    assert code == 0, errors
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and set(metrics["results"]) == {"rte", "mrpc", "mr", "snli"}
    assert [metrics["results"][t]["seen"] for t in ("rte", "mr")] == [True, False]
    assert len(metrics["results"]["rte"]["per_instruction"]) == 2 and "held-out" in printed
    tensors, meta = load_bank(out)
    assert meta["tasks"] == ["rte", "mrpc"] and meta["heldout"] == ["mr", "snli"] and meta["steps"] == 4
    assert set(meta["instructions"]) == {"rte", "mrpc", "mr", "snli"}
    assert {"bank.keys", "bank.values", "task_prompts.weight"} <= set(tensors)

    code, printed, errors = _run(["spt", "evaluate", str(out), "--data_dir", str(DATA), "--limit", "8",
                                  "--output_dir", str(tmp_path / "eval")], capsys)
    assert code == 0, errors
    evaluated = json.loads((tmp_path / "eval" / "spt_eval.json").read_text())["results"]
    assert set(evaluated) == {"mr", "snli"}
    for task in ("mr", "snli"):
        assert evaluated[task]["accuracy"] == pytest.approx(metrics["results"][task]["accuracy"])

    code, printed, errors = _run(["spt", "inspect", str(out)], capsys)
    assert code == 0, errors
    assert (out / "retrieval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "retrieval.json").read_text())
    assert len(record["rows"]) == 2 + 2 + 2 + 2 and len(record["weights"][0]) == 4
    assert all(sum(row) == pytest.approx(1.0) for row in record["weights"])


def test_help_of_every_spt_command(capsys):
    assert main(["spt", "train", "--help"]) == 0
    shown = capsys.readouterr()
    assert "--heldout" in shown.out + shown.err
    for command in ("evaluate", "inspect"):
        assert main(["spt", command, "--help"]) == 0
        shown = capsys.readouterr()
        assert "--bank" in shown.out + shown.err


BAD = {
    "top_k above bank": (["--top_k", "5"], "--top_k 5 must be between 1 and min"),
    "unknown similarity": (["--similarity", "l2"], "unknown --similarity 'l2': use dot or cosine"),
    "unknown mode": (["--mode", "best"], "unknown --mode 'best'"),
    "task twice": (["--heldout", "demo"], "appear twice"),
    "linear head zero-shot": (["--heldout", "mr", "--head", "linear"], "--head linear"),
    "unknown task": (["--tasks", "demo,nope"], "unknown task 'nope'"),
    "file init": (["--init", "file:x"], "not supported by SPT"),
    "bad mixing": (["--mixing", "uniform"], "unknown --mixing 'uniform'"),
    "missing bank": (["--init_bank", "/nonexistent"], "holds no bank.safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_flags_give_one_error_line(case, tmp_path, capsys):
    extra, needle = BAD[case]
    out = tmp_path / "out"
    code, _, errors = _run(["spt", "train"] + BASE + ["--tasks", "demo", "--max_steps", "1", "--output_dir", str(out)]
                           + extra, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert re.search(re.escape(needle), errors[0]), errors[0]
    assert not (out / "bank.safetensors").exists()


def _train(out, *extra, steps=3):
    from ds_prompt.config import build_config
    from ds_prompt.recipes.spt import SPTConfig, train
    flags = dict(zip(BASE[::2], BASE[1::2]), **{"--tasks": "demo", "--lr": "0.05"})
    flags.update(dict(zip(extra[::2], extra[1::2])))
    flags = {k.lstrip("-"): v for k, v in flags.items()}
    return train(build_config(SPTConfig, None, output_dir=str(out), max_steps=steps, **flags))


def test_resume_matches_uninterrupted_run(tmp_path):
    _train(tmp_path / "full", "--save_every", "2", steps=4)
    _train(tmp_path / "cut", "--save_every", "2", steps=2)
    metrics = _train(tmp_path / "cut", "--save_every", "2", steps=4)
    full, cut = load_bank(tmp_path / "full")[0], load_bank(tmp_path / "cut")[0]
    assert metrics["steps"] == 4
    for name in full:
        torch.testing.assert_close(cut[name], full[name], atol=1e-6, rtol=1e-5)


def test_shared_and_untrained_baselines(tmp_path):
    spt = _train(tmp_path / "spt", "--save_every", "0", steps=2)
    shared = _train(tmp_path / "shared", "--mode", "shared", "--save_every", "0", steps=2)
    tensors, meta = load_bank(tmp_path / "shared")
    assert (meta["size"], meta["top_k"], meta["task_prompt"]) == (1, 1, "none")
    assert shared["prompt_length"] == spt["prompt_length"] == 4 and tensors["bank.values"].shape == (1, 4, 32)
    untrained = _train(tmp_path / "untrained", "--mode", "untrained", steps=2)
    result = untrained["results"]["demo"]
    assert untrained["steps"] == 0 and result["accuracy"] == result["accuracy_before"]
    assert not (tmp_path / "untrained" / "checkpoints").exists()


@needs_data
def test_pretrained_bank_initializes_prompt_tuning_on_other_tasks(tmp_path):
    _train(tmp_path / "glue", "--tasks", "rte,qnli", "--data_dir", str(DATA), "--train_limit", "16",
           "--save_every", "0", "--eval_seen", "False", steps=2)
    pretrained = load_bank(tmp_path / "glue")[0]
    _train(tmp_path / "tuned", "--tasks", "mrpc,rte", "--data_dir", str(DATA), "--train_limit", "16",
           "--init_bank", str(tmp_path / "glue"), "--freeze_bank", "True", "--save_every", "0", steps=2)
    tuned, meta = load_bank(tmp_path / "tuned")
    assert meta["tasks"] == ["mrpc", "rte"] and meta["size"] == 4
    for name in ("bank.keys", "bank.values"):
        torch.testing.assert_close(tuned[name], pretrained[name])
    # rte starts from its pretrained prompt and keeps training; mrpc gets a fresh one
    assert not torch.equal(tuned["task_prompts.weight"][1], pretrained["task_prompts.weight"][0])


@needs_data
@pytest.mark.multiproc
def test_two_rank_zero3_partitioned_bank_matches_one_rank(tmp_path):
    config = tmp_path / "zero3_all.json"
    config.write_text(json.dumps({
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "steps_per_print": 10**9, "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},  # partition even a tiny bank
        "bf16": {"enabled": False}, "fp16": {"enabled": False}}))
    args = BASE + DATA_FLAGS + ["--tasks", "rte,mrpc", "--heldout", "snli", "--max_steps", "3", "--save_every", "0",
                                "--eval_seen", "False"]
    _torchrun(2, ["-m", "ds_prompt.cli", "spt", "train"] + args + ["--deepspeed", str(config), "--output_dir",
                                                                   str(tmp_path / "two")])
    assert main(["spt", "train"] + args + ["--output_dir", str(tmp_path / "one")]) == 0
    two, one = load_bank(tmp_path / "two")[0], load_bank(tmp_path / "one")[0]
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=1e-5)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and os.path.exists(tmp_path / "two" / "spt_eval.json")


def _torchrun(nproc, args):
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
    proc = subprocess.run(cmd + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_train_backbone_saves_and_reloads_the_tuned_backbone(tmp_path):
    from safetensors.torch import load_file

    from ds_prompt.models.tiny import build_tiny
    from ds_prompt.recipes.spt import evaluate_bank
    metrics = _train(tmp_path / "full", "--train_backbone", "True", "--backbone_lr", "0.01", "--save_every", "0",
                     steps=2)
    tuned = load_file(str(tmp_path / "full" / "backbone.safetensors"))
    original = dict(build_tiny("bert")[0].named_parameters())
    assert any(not torch.equal(tuned[n], p.detach()) for n, p in original.items())
    evaluated = evaluate_bank(str(tmp_path / "full"), ["demo"], limit=8)["results"]["demo"]
    trained = metrics["results"]["demo"]
    assert (evaluated["accuracy"], evaluated["loss"]) == pytest.approx((trained["accuracy"], trained["loss"]))
    (tmp_path / "full" / "backbone.safetensors").unlink()
    assert evaluate_bank(str(tmp_path / "full"), ["demo"], limit=8)["results"]["demo"]["loss"] != pytest.approx(
        trained["loss"])


@pytest.mark.parametrize("arch", ("bert", "gpt2", "t5"))
def test_instruction_in_input_precedes_the_text_with_its_own_prompt(arch):
    """T0-style input: [specials; discrete prompt + newline; template], the prompt being the one the row's
    retrieval query is built from; the scoring index moves with it and max_length still holds."""
    bb = load_backbone(f"tiny:{arch}", dtype="fp32")
    specs = [get_task(n) for n in ("sst2", "rte")]
    args = (specs, bb.tokenizer, bb.family, 40, 4, [_examples(s) for s in specs], [_examples(s) for s in specs],
            bb.family is Family.CAUSAL)
    plain, fed = TaskSuite.build(*args), TaskSuite.build(*args, instruction_in_input=True)
    for sample in (Sample(0, 0, 1), Sample(1, 1, 0), Sample(0, 2, 0)):
        task = fed.tasks[sample.task]
        text = task.spec.instructions[sample.instruction] + "\n"
        expected_extra = bb.tokenizer(text, add_special_tokens=False)["input_ids"]
        got = fed.encoded(sample)
        k = len(task.encoder.prefix)
        assert got.input_ids[k:k + len(expected_extra)] == expected_extra
        assert len(got.input_ids) + 4 <= 40
        # Without truncation the rest is the plain encoding, scored at the same token.
        ref = plain.encoded(sample)
        if len(ref.input_ids) + len(expected_extra) + 4 <= 40 - max(len(x) for x in task.input_instruction_ids):
            assert got.input_ids[:k] + got.input_ids[k + len(expected_extra):] == ref.input_ids
            assert got.input_ids[got.score_index] == ref.input_ids[ref.score_index]
            assert got.score_index == ref.score_index + len(expected_extra)
    batch = fed.collate([Sample(0, 0, 0), Sample(0, 0, 1)])
    assert not torch.equal(batch["input_ids"][0], batch["input_ids"][1])  # same text, its own discrete prompt
    assert [len(e) for e in (fed.eval_encoded(0, 0), fed.eval_encoded(0, 1))] == [3, 3]
    assert fed.eval_encoded(0, 0)[0].input_ids != fed.eval_encoded(0, 1)[0].input_ids


@needs_data
def test_cli_instruction_in_input_is_recorded_and_evaluated_the_same(tmp_path, capsys):
    out = tmp_path / "spt"
    code, _, errors = _run(["spt", "train"] + BASE + MULTI + ["--output_dir", str(out), "--max_steps", "2",
                                                             "--save_every", "0", "--instruction_in_input", "True"],
                           capsys)
    assert code == 0, errors
    metrics = json.loads((out / "metrics.json").read_text())
    assert load_bank(out)[1]["instruction_in_input"] is True
    code, _, errors = _run(["spt", "evaluate", str(out), "--data_dir", str(DATA), "--limit", "8"], capsys)
    assert code == 0, errors
    evaluated = json.loads((out / "spt_eval.json").read_text())["results"]
    for task in ("mr", "snli"):
        assert evaluated[task]["per_instruction"] == pytest.approx(metrics["results"][task]["per_instruction"])


def test_a_linear_head_bank_exports_each_head_with_its_prompt_and_refuses_peft(tmp_path, capsys):
    """A bank trained with --head linear: `spt export` writes each task's trained head beside its prompt, so plain
    `ds-prompt evaluate` scores what `spt evaluate` scores; --format peft is refused (no place for the head)."""
    from safetensors.torch import load_file
    out = tmp_path / "spt"
    code, _, errors = _run(["spt", "train"] + BASE + ["--tasks", "rte,mrpc", "--head", "linear"] + DATA_FLAGS
                           + ["--output_dir", str(out), "--max_steps", "3", "--save_every", "0"], capsys)
    assert code == 0, errors
    code, _, errors = _run(["spt", "evaluate", str(out), "--tasks", "rte", "--data_dir", str(DATA), "--limit", "8",
                            "--output_dir", str(tmp_path / "eval")], capsys)
    assert code == 0, errors
    want = json.loads((tmp_path / "eval" / "spt_eval.json").read_text())["results"]["rte"]["per_instruction"][0]
    code, _, errors = _run(["spt", "export", str(out), "--output_dir", str(tmp_path / "x"), "--tasks", "rte"], capsys)
    assert code == 0, errors
    exported = tmp_path / "x" / "rte"
    assert json.loads((exported / "prompt.json").read_text())["head"] == "LinearHead"
    bank = load_file(str(out / "bank.safetensors"))
    heads = {k: v for k, v in load_file(str(exported / "prompt.safetensors")).items() if k.startswith("head.")}
    rte = json.loads((out / "bank.json").read_text())["tasks"].index("rte")
    assert heads.keys() == {"head.linear.weight", "head.linear.bias"}
    for name, value in heads.items():
        assert torch.equal(value, bank[name.replace("head.", f"head.heads.{rte}.", 1)])
    assert main(["evaluate", "--prompt", str(exported), "--data_dir", str(DATA), "--limit", "8",
                 "--seed", str(json.loads((out / "bank.json").read_text())["seed"])]) == 0
    assert json.loads((exported / "eval_rte.json").read_text())["accuracy"] == pytest.approx(want)
    code, _, errors = _run(["spt", "export", str(out), "--output_dir", str(tmp_path / "p"), "--format", "peft"],
                           capsys)
    assert code == 2 and "cannot hold the per-task heads" in errors[0] and not (tmp_path / "p").exists()


def test_export_gives_each_task_the_prompt_spt_evaluate_scores(tmp_path, capsys):
    """`spt export` writes the retrieved-and-combined prompt per task; plain `ds-prompt evaluate` of it scores
    exactly what `spt evaluate` scores for that discrete prompt; the PEFT format loads in peft."""
    out = tmp_path / "spt"
    code, _, errors = _run(["spt", "train"] + BASE + MULTI + ["--output_dir", str(out), "--max_steps", "3",
                                                               "--save_every", "0"], capsys)
    assert code == 0, errors
    code, _, errors = _run(["spt", "evaluate", str(out), "--tasks", "mr,rte", "--data_dir", str(DATA), "--limit", "8",
                            "--output_dir", str(tmp_path / "eval")], capsys)
    assert code == 0, errors
    spt_scores = json.loads((tmp_path / "eval" / "spt_eval.json").read_text())["results"]
    code, printed, errors = _run(["spt", "export", str(out), "--output_dir", str(tmp_path / "x"), "--tasks",
                                  "mr,rte"], capsys)
    assert code == 0, errors
    for task in ("mr", "rte"):
        meta = json.loads((tmp_path / "x" / task / "prompt.json").read_text())
        assert meta["task"] == task and meta["spt_source"]["seen"] == (task == "rte")
        assert main(["evaluate", "--prompt", str(tmp_path / "x" / task), "--data_dir", str(DATA), "--limit", "8",
                     "--seed", str(json.loads((out / "bank.json").read_text())["seed"])]) == 0
        plain = json.loads((tmp_path / "x" / task / f"eval_{task}.json").read_text())
        assert plain["accuracy"] == pytest.approx(spt_scores[task]["per_instruction"][0])
    code, _, errors = _run(["spt", "export", str(out), "--output_dir", str(tmp_path / "p"), "--tasks", "mr",
                            "--format", "peft"], capsys)
    assert code == 0, errors
    config = json.loads((tmp_path / "p" / "mr" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] > 0
