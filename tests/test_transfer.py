"""Prompt transferability: indicators, activated neurons, FFN recording, projector, matrix, TPT, library."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ds_prompt.artifacts import load_prompt, save_prompt
from ds_prompt.cli import main as cli_main
from ds_prompt.errors import UserError
from ds_prompt.models.shortcuts import full_forward
from ds_prompt.transfer import indicators as ind
from ds_prompt.transfer.activations import ffn_sites, prompted_ffn_activations
from tests.helpers import REPO, SENTENCES, batch_of, prompted_tiny, subprocess_env

ALL_ARCHS = ("bert", "bert_encoder", "roberta", "electra", "gpt2", "llama", "qwen2", "t5", "t5_gated")
HEADS = {"mlm": "LabelWordHead", "encoder": "SimilarityHead", "causal": "LabelWordHead", "seq2seq": "LabelWordHead"}
FAMILIES = {"bert": "mlm", "bert_encoder": "encoder", "gpt2": "causal", "t5": "seq2seq"}


def make_prompt(folder, task, arch="bert", length=4, d=32, seed=0, scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    family = FAMILIES.get(arch, "mlm")
    meta = {"backbone": f"tiny:{arch}", "family": family, "task": task, "head": HEADS[family], "max_length": 64,
            "metrics": {"accuracy": 0.5 + seed / 100}}
    save_prompt(folder, torch.randn(length, d, generator=gen) * scale, meta)
    return str(folder)


def write_task_data(root, n=12):
    """Small local splits for sst2 (sentiment) and rte (2-way NLI) under `root`."""
    pos, neg = ["a wonderful , moving film", "great fun"], ["dull and lifeless", "a boring mess"]
    rows = {"sst2": [{"text": (pos + neg)[i % 4], "label": ["positive", "positive", "negative", "negative"][i % 4]}
                     for i in range(n)],
            "rte": [{"text_a": "a man is walking a dog", "text_b": ["a man walks", "nobody walks"][i % 2],
                     "label": ["entailment", "not_entailment"][i % 2]} for i in range(n)]}
    for task, records in rows.items():
        os.makedirs(root / task, exist_ok=True)
        for split in ("train", "validation"):
            (root / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(root)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---- indicator formulas ----------------------------------------------------------------------------------------
def test_embedding_indicators_match_hand_computed_values():
    p1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # flattened [1,0,0,1] . [1,0,1,0] = 1, norms sqrt2 * sqrt2
    assert ind.cosine(p1, p2) == pytest.approx(0.5)
    # token pairs: cos 1, 1, 0, 0
    assert ind.cosine_token(p1, p2) == pytest.approx(0.5)
    # ||[0,0,-1,1]|| = sqrt2
    assert ind.euclidean(p1, p2) == pytest.approx(1 / (1 + math.sqrt(2)))
    # token distances 0, 0, sqrt2, sqrt2 -> mean sqrt2 / 2
    assert ind.euclidean_token(p1, p2) == pytest.approx(1 / (1 + math.sqrt(2) / 2))
    assert ind.cosine(p1, 7 * p1) == pytest.approx(1.0) and ind.euclidean(p1, p1) == 1.0


def test_embedding_indicators_on_random_prompts_and_shape_errors():
    a, b = torch.randn(5, 8), torch.randn(3, 8)
    ref = torch.stack([torch.stack([F.cosine_similarity(x, y, dim=0) for y in b]) for x in a]).mean()
    assert ind.cosine_token(a, b) == pytest.approx(ref.item(), abs=1e-6)
    dist = torch.stack([torch.stack([(x - y).norm() for y in b]) for x in a]).mean()
    assert ind.euclidean_token(a, b) == pytest.approx(1 / (1 + dist.item()), abs=1e-6)
    with pytest.raises(UserError, match="cos_token"):
        ind.cosine(a, b)
    with pytest.raises(UserError, match="projector apply"):
        ind.cosine_token(a, torch.randn(5, 4))
    assert ind.parse_metrics("all") == ["cos", "cos_token", "euc", "euc_token", "on"]
    assert ind.parse_metrics(("on", "cos")) == ["cos", "on"]
    with pytest.raises(UserError, match="unknown --metric bogus"):
        ind.parse_metrics("cos,bogus")


def test_activated_neuron_overlap_on_known_masks():
    t = lambda rows: torch.tensor(rows, dtype=torch.bool)  # noqa: E731
    m1 = {"l0": t([[1, 1, 0, 0]]), "l1": t([[1, 0, 0, 0]]), "l2": t([[0, 0, 1, 1]])}
    m2 = {"l0": t([[1, 0, 1, 0]]), "l1": t([[1, 0, 0, 0]]), "l2": t([[0, 0, 0, 0]])}
    # |m1| = 5, |m2| = 3, |m1 & m2| = 2
    assert ind.activated_neuron_overlap(m1, m2) == pytest.approx(2 / math.sqrt(15))
    assert ind.activated_neuron_overlap(m1, m1) == pytest.approx(1.0)
    assert ind.activated_neuron_overlap(m1, m2, ["l2"]) == 0.0  # empty mask
    windows = ind.on_windows(m1, m2, window=2)
    assert [(s, e) for s, e, _ in windows] == [(0, 2), (1, 3)]
    assert windows[0][2] == pytest.approx(2 / math.sqrt(3 * 3)) and windows[1][2] == pytest.approx(1 / math.sqrt(3))
    assert ind.on_windows(m1, m2, window=3)[0][2] == pytest.approx(ind.activated_neuron_overlap(m1, m2))


def test_neuron_masks_binarize_with_the_kernel():
    acts = {"l0": torch.tensor([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.1]])}
    assert ind.neuron_masks(acts)["l0"].tolist() == [[False, False, True], [True, False, True]]
    # all-token mode: active when positive on >= half the rows
    acts = {"l0": torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, -1.0], [1.0, 1.0, -1.0]])}
    assert ind.neuron_masks(acts, per_token=False)["l0"].tolist() == [[True, False, False]]


def test_spearman_against_matrix():
    rows = [{"source": s, "target": t, "metric": "cos", "value": v}
            for (s, t), v in {("a", "b"): 0.9, ("c", "b"): 0.1, ("d", "b"): 0.5, ("a", "a"): 1.0}.items()]
    matrix = [{"source": s, "target": t, "accuracy": str(acc)}
              for (s, t), acc in {("a", "b"): 0.8, ("c", "b"): 0.2, ("d", "b"): 0.6, ("a", "a"): 0.1}.items()]
    out = ind.spearman_against(rows, matrix)
    assert out[0]["n"] == 3 and out[0]["spearman"] == pytest.approx(1.0) and out[0]["mean_per_target"] == 1.0
    assert ind.spearman_against(rows, matrix, include_self=True)[0]["n"] == 4


# ---- FFN activation recording ----------------------------------------------------------------------------------
def _manual_ffn(site, hf_model, x):
    """The FFN intermediate computed by hand from the layer weights, x = the FFN block's input [B, T, d]."""
    cfg, inputs = hf_model.config, site.ref.input_projections()
    kind = site.ref.inputs
    if kind == ("intermediate.dense",):
        assert cfg.hidden_act == "gelu"
        return F.gelu(x @ inputs[0].weight.T + inputs[0].bias)
    if kind == ("c_fc",):  # GPT-2 Conv1D: x @ W + b, W [in, out]; gelu_new = tanh GELU
        assert cfg.activation_function == "gelu_new"
        return F.gelu(x @ inputs[0].weight + inputs[0].bias, approximate="tanh")
    if kind == ("gate_proj", "up_proj"):
        assert cfg.hidden_act == "silu"
        return F.silu(x @ inputs[0].weight.T) * (x @ inputs[1].weight.T)
    if kind == ("wi_0", "wi_1"):  # T5 gated-gelu
        return F.gelu(x @ inputs[0].weight.T, approximate="tanh") * (x @ inputs[1].weight.T)
    assert kind == ("wi",)
    return F.relu(x @ inputs[0].weight.T)


def _ffn_inputs(bb, model, args, sites):
    """{site name: the FFN block's input [B, T, d]} (the first input projection's input), captured in a separate
    forward."""
    inputs, handles = {}, []
    for site in sites:
        first = site.ref.input_projections()[0]
        handles.append(first.register_forward_pre_hook(lambda m, a, name=site.name: inputs.__setitem__(name, a[0])))
    with torch.no_grad(), full_forward(model):  # every position of every layer
        model(*args)
    for h in handles:
        h.remove()
    return inputs


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_recorded_activations_equal_manual_ffn_and_leave_output_unchanged(arch):
    bb, model, enc = prompted_tiny(arch, prompt_length=3)
    _, batch = batch_of(bb, enc, SENTENCES)
    args = (batch["input_ids"], batch["attention_mask"], batch["score_index"])
    with torch.no_grad(), full_forward(model):  # recording runs the full forward (shortcuts skip positions)
        plain = model(*args)
    sites = ffn_sites(bb.model, "both")
    assert len(sites) == (4 if arch.startswith("t5") else 2)
    inputs = _ffn_inputs(bb, model, args, sites)  # by hand from the FFN blocks' inputs, a separate forward
    seen = []
    top = model.register_forward_hook(lambda m, a, out: seen.append(out))
    recorded = prompted_ffn_activations(model, *args, position=None, seq2seq_part="both")
    at_zero = prompted_ffn_activations(model, *args, position=0, seq2seq_part="both")
    top.remove()
    assert list(recorded) == [s.name for s in sites]
    keep = torch.cat([torch.ones(len(SENTENCES), 3, dtype=torch.long), batch["attention_mask"]], 1).bool()
    for site in sites:
        with torch.no_grad():
            full = _manual_ffn(site, bb.model, inputs[site.name])
        expected = full[:, 0] if site.decoder else full[keep]
        torch.testing.assert_close(recorded[site.name], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(at_zero[site.name], full[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[0], plain, rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.shortcuts  # switched back on after recording
    with torch.no_grad(), full_forward(model):
        torch.testing.assert_close(model(*args), plain, rtol=0, atol=0)


def _hand_scoring_rows(bb, batch, n_prompt):
    """Scoring position of every row of the prompted sequence, found by hand from the token ids."""
    ids = batch["input_ids"]
    if bb.family.value == "causal":  # left padding: each row's last token is at the last column
        assert (batch["attention_mask"][:, -1] == 1).all()
        return torch.full((ids.shape[0],), n_prompt + ids.shape[1] - 1)
    return n_prompt + (ids == bb.tokenizer.mask_token_id).long().argmax(1)


@pytest.mark.parametrize("arch", ("bert", "roberta", "gpt2", "llama", "qwen2", "t5", "t5_gated"))
@pytest.mark.parametrize("neuron", ("product", "gate"))
def test_on_at_the_scoring_position_matches_hand_computed_masks(arch, neuron):
    bb, model, enc = prompted_tiny(arch, prompt_length=3)
    _, batch = batch_of(bb, enc, SENTENCES)
    args = (batch["input_ids"], batch["attention_mask"], batch["score_index"])
    gated = arch in ("llama", "qwen2", "t5_gated")
    if neuron == "gate" and not gated:
        with pytest.raises(UserError, match="--neuron gate needs a gated FFN"):
            prompted_ffn_activations(model, *args, position="score", neuron=neuron)
        return
    recorded = prompted_ffn_activations(model, *args, position="score", neuron=neuron)
    sites = ffn_sites(bb.model, "decoder")
    inputs = _ffn_inputs(bb, model, args, sites)
    rows = torch.arange(len(SENTENCES))
    assert len(recorded) == len(sites)
    for site, name in zip(sites, recorded):
        x = inputs[site.name]
        with torch.no_grad():
            if neuron == "gate":
                assert site.ref.inputs[0] in ("wi_0", "gate_proj")
                full = x @ site.ref.input_projections()[0].weight.T
            else:
                full = _manual_ffn(site, bb.model, x)
        expected = full[:, 0] if site.decoder else full[rows, _hand_scoring_rows(bb, batch, 3)]
        torch.testing.assert_close(recorded[name], expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(ind.neuron_masks({name: recorded[name]})[name], expected > 0)
    if arch.startswith("t5"):
        with pytest.raises(UserError, match="first decoding step"):
            prompted_ffn_activations(model, *args, position="score", seq2seq_part="both")


def test_scoring_position_differs_from_the_first_prompt_vector_on_a_causal_lm():
    """On a causal LM the first prompt vector has seen only itself: its activations do not depend on the rest of
    the prompt, while the scoring position's do."""
    from ds_prompt.models.backbone import load_backbone
    bb = load_backbone("tiny:llama", dtype="fp32")
    p1 = torch.randn(4, 32)
    p2 = p1.clone()
    p2[1:] = torch.randn(3, 32)
    masks = {}
    for position in (0, "score"):
        recorder = ind.NeuronRecorder(bb, ind.NeuronProbe(position=position), prompt_length=4)
        masks[position] = (recorder.masks(p1), recorder.masks(p2))
        assert recorder.batch["input_ids"].tolist() == [[bb.tokenizer.bos_token_id]]
    assert ind.activated_neuron_overlap(*masks[0]) == 1.0
    assert ind.activated_neuron_overlap(*masks["score"]) < 1.0


def test_mlm_probe_without_samples_has_a_mask_slot():
    from ds_prompt.models.backbone import load_backbone
    bb = load_backbone("tiny:bert", dtype="fp32")
    batch = ind.probe_batch(bb, ind.NeuronProbe(), prompt_length=4)
    assert batch["input_ids"].tolist() == [[bb.tokenizer.cls_token_id, bb.tokenizer.mask_token_id]]
    assert batch["score_index"].tolist() == [1]


def test_t5_uses_decoder_ffn_at_first_step_by_default():
    bb, model, enc = prompted_tiny("t5", prompt_length=3)
    _, batch = batch_of(bb, enc, SENTENCES[:2])
    acts = prompted_ffn_activations(model, batch["input_ids"], batch["attention_mask"], batch["score_index"])
    assert all(name.startswith("decoder.") and a.shape == (2, 64) for name, a in acts.items())
    with pytest.raises(UserError, match="--ffn_part"):
        ffn_sites(bb.model, "middle")


def test_neuron_recorder_with_task_text_samples():
    from ds_prompt.models.backbone import load_backbone
    bb = load_backbone("tiny:gpt2", dtype="fp32")
    probe = ind.NeuronProbe(task="demo", samples=3)
    recorder = ind.NeuronRecorder(bb, probe, prompt_length=4)
    masks = recorder.masks(torch.randn(4, 32))
    assert list(masks) == ["transformer.h.0", "transformer.h.1"]  # layer names, as models.ffn names them
    assert all(m.shape == (3, 64) and m.dtype == torch.bool for m in masks.values())
    assert recorder.masks(torch.randn(2, 32))["transformer.h.0"].shape == (3, 64)  # shorter prompt
    with pytest.raises(UserError, match="d=16"):
        recorder.masks(torch.randn(4, 16))


# ---- indicators CLI --------------------------------------------------------------------------------------------
def test_indicators_cli_writes_contract_csv_and_correlation(tmp_path):
    paths = [make_prompt(tmp_path / t, t, seed=i) for i, t in enumerate(("sst2", "rte", "mr"))]
    matrix = tmp_path / "matrix.csv"
    accs = {("sst2", "rte"): 0.6, ("sst2", "mr"): 0.9, ("rte", "sst2"): 0.5, ("rte", "mr"): 0.4,
            ("mr", "sst2"): 0.8, ("mr", "rte"): 0.55}
    matrix.write_text("source,target,accuracy\n" + "".join(f"{s},{t},{a}\n" for (s, t), a in accs.items()))
    out = tmp_path / "ind"
    rc = cli_main(["indicators", "--prompts", ",".join(paths), "--metric", "all", "--output_dir", str(out),
                   "--against", str(matrix)])
    assert rc == 0
    rows = read_rows(out / "indicators.csv")
    assert list(rows[0]) == ["source", "target", "metric", "value"]
    assert {r["metric"] for r in rows} == {"cos", "cos_token", "euc", "euc_token", "on"} and len(rows) == 3 * 3 * 5
    by = {(r["source"], r["target"], r["metric"]): float(r["value"]) for r in rows}
    p = {t: load_prompt(path)[0] for t, path in zip(("sst2", "rte", "mr"), paths)}
    assert by[("sst2", "rte", "cos")] == pytest.approx(ind.cosine(p["sst2"], p["rte"]))
    assert by[("mr", "mr", "on")] == pytest.approx(1.0) and 0 < by[("sst2", "rte", "on")] <= 1
    windows = read_rows(out / "on_windows.csv")
    assert {(w["start"], w["end"]) for w in windows} == {("0", "2")}  # 2 layers < window 3
    corr = {r["metric"]: r for r in read_rows(out / "correlation.csv")}
    assert set(corr) == {"cos", "cos_token", "euc", "euc_token", "on"} and corr["on"]["n"] == "6"


def test_indicators_errors_name_the_fix(tmp_path):
    a = make_prompt(tmp_path / "a", "sst2")
    b = make_prompt(tmp_path / "b", "rte", length=6)
    with pytest.raises(UserError, match="cos_token"):
        ind.compute_indicators(f"{a},{b}", "cos", str(tmp_path / "o"))
    c = make_prompt(tmp_path / "c", "mr", arch="gpt2")
    with pytest.raises(UserError, match="--model"):
        ind.compute_indicators(f"{a},{c}", "on", str(tmp_path / "o"))


# ---- transfer matrix -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "bert_encoder", "gpt2", "t5"])
def test_transfer_matrix_cli_writes_csv_and_heatmap(tmp_path, arch):
    data = write_task_data(tmp_path / "data")
    p1 = make_prompt(tmp_path / "p" / "sst2", "sst2", arch=arch)
    make_prompt(tmp_path / "p" / "rte", "rte", arch=arch, seed=1)
    out = tmp_path / "m"
    rc = cli_main(["transfer", "matrix", "--prompts", str(tmp_path / "p"), "--tasks", "sst2,rte",
                   "--data_dir", data, "--output_dir", str(out)])
    assert rc == 0
    rows = read_rows(out / "matrix.csv")
    assert list(rows[0]) == ["source", "target", "accuracy", "f1", "matthews", "metric"]
    assert {(r["source"], r["target"]) for r in rows} == {(s, t) for s in ("rte", "sst2", "random")
                                                          for t in ("sst2", "rte")}
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same prompt evaluated through the ordinary `evaluate` path agrees
    from ds_prompt.recipes.inference import evaluate_prompt
    direct = evaluate_prompt(p1, task="rte", data_dir=data, output_dir=str(tmp_path / "e"))
    cell = next(r for r in rows if r["source"] == "sst2" and r["target"] == "rte")
    assert float(cell["accuracy"]) == pytest.approx(direct["accuracy"])
    assert float(cell["f1"]) == pytest.approx(direct["f1"]) and float(cell["matthews"]) == pytest.approx(
        direct["matthews"])
    assert cell["metric"] == "accuracy"


def test_transfer_matrix_rejects_mismatched_width(tmp_path):
    data = write_task_data(tmp_path / "data")
    p = make_prompt(tmp_path / "p", "sst2", d=16)
    assert cli_main(["transfer", "matrix", "--prompts", p, "--tasks", "sst2", "--data_dir", data,
                     "--output_dir", str(tmp_path / "m")]) == 2
    from ds_prompt.transfer.matrix import transfer_matrix
    with pytest.raises(UserError, match="d=16 but the model expects 32: map it with `ds-prompt transfer projector"):
        transfer_matrix(p, "sst2", data_dir=data)
    linear = tmp_path / "linear"
    save_prompt(linear, torch.zeros(4, 32), {"backbone": "tiny:bert_encoder", "task": "sst2", "head": "LinearHead",
                                             "labels": ["negative", "positive"]},
                {"head.linear.weight": torch.zeros(2, 32), "head.linear.bias": torch.zeros(2)})
    with pytest.raises(UserError, match="linear head trained for sst2: it cannot score rte"):
        transfer_matrix(str(linear), "sst2,rte", data_dir=data)


# ---- projector -------------------------------------------------------------------------------------------------
def test_projector_shapes():
    from ds_prompt.transfer.projector import ProjectorConfig, PromptProjector
    proj = PromptProjector(ProjectorConfig(source_length=4, source_dim=16, target_dim=24, target_length=6, hidden=8))
    assert isinstance(proj.net[1], torch.nn.LeakyReLU)
    out = proj(torch.randn(4, 16))
    assert out.shape == (6, 24) and proj(torch.randn(3, 4, 16)).shape == (3, 6, 24)
    # LayerNorm(d_t) at init: every target token has mean 0, variance 1
    torch.testing.assert_close(out.mean(-1), torch.zeros(6), atol=1e-5, rtol=0)
    assert proj.net[0].in_features == 64 and proj.net[2].out_features == 6 * 24
    tanh = PromptProjector(ProjectorConfig(source_length=4, source_dim=16, target_dim=24, activation="tanh"))
    assert isinstance(tanh.net[1], torch.nn.Tanh) and tanh(torch.randn(4, 16)).shape == (4, 24)
    with pytest.raises(UserError, match=r"shape \(5, 16\).*\[4, 16\]"):
        proj(torch.randn(5, 16))
    with pytest.raises(UserError, match="--activation"):
        ProjectorConfig(source_length=4, source_dim=16, target_dim=24, activation="relu6")


@pytest.mark.parametrize("target", ["gpt2", "bert_encoder"])
def test_projector_gradients_reach_only_the_projector(target):
    from ds_prompt.models.backbone import load_backbone
    from ds_prompt.transfer.projector import ProjectorConfig, ProjectorObjective, PromptProjector
    from tests.helpers import PAIR_TASK
    bb = load_backbone(f"tiny:{target}", dtype="fp32")
    proj = PromptProjector(ProjectorConfig(source_length=4, source_dim=16, target_dim=32, target_length=5, hidden=8))
    sources = torch.randn(2, 4, 16)
    objective = ProjectorObjective(bb, proj, sources, [PAIR_TASK, PAIR_TASK], "auto")
    from ds_prompt.data.encoding import TemplateEncoder
    enc = TemplateEncoder(PAIR_TASK, bb.tokenizer, bb.family, 64, 5)
    _, batch = batch_of(bb, enc, SENTENCES, labels=[0, 1, 2, 0])
    logits = objective(batch["input_ids"], batch["attention_mask"], batch["score_index"], source=1)
    assert logits.shape == (4, 3)
    F.cross_entropy(logits, batch["labels"]).backward()
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    assert trainable == {f"prompted.prompt.projector.{n}" for n, _ in proj.named_parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert all(p.grad is None for n, p in objective.named_parameters() if n not in trainable)
    assert not objective.prompted.prompt.sources.requires_grad


def test_projector_train_apply_then_evaluate_and_init(tmp_path):
    from ds_prompt.models.soft_prompt import init_prompt_tensor
    from ds_prompt.models.tiny import build_tiny
    from ds_prompt.recipes.inference import evaluate_prompt
    src = make_prompt(tmp_path / "src", "demo", arch="bert")
    out = tmp_path / "proj"
    rc = cli_main(["projector", "train", "--source_model", "tiny:bert", "--target_model", "tiny:gpt2",
                   "--prompts", src, "--tasks", "demo", "--output_dir", str(out), "--max_steps", "3",
                   "--batch_size", "8", "--train_limit", "16", "--eval_limit", "8", "--hidden", "16",
                   "--target_length", "6", "--deepspeed", "zero0_cpu", "--progress", "false"])
    assert rc == 0
    info = json.loads((out / "projector.json").read_text())
    assert info["target_model"] == "tiny:gpt2" and info["source_length"] == 4 and info["target_length"] == 6
    assert info["tasks"] == ["demo"] and info["target_head"] == "label_words" and info["metrics"]["steps"] == 3
    from safetensors.torch import load_file
    norm = load_file(str(out / "projector.safetensors"))["norm.weight"]
    assert norm.shape == (32,) and not torch.allclose(norm, torch.ones(32))  # trained away from LayerNorm's init
    mapped = tmp_path / "mapped"
    assert cli_main(["projector", "apply", "--projector", str(out), "--prompt", src, "--output_dir", str(mapped)]) == 0
    tensor, meta, _ = load_prompt(mapped)
    assert tensor.shape == (6, 32) and meta["backbone"] == "tiny:gpt2" and meta["task"] == "demo"
    result = evaluate_prompt(str(mapped), output_dir=str(tmp_path / "e"), limit=8)
    assert result["n"] == 8
    model, tok = build_tiny("gpt2")
    init = init_prompt_tensor(f"file:{mapped}", 6, model.get_input_embeddings(), tok, 0)
    torch.testing.assert_close(init, tensor)
    wrong = make_prompt(tmp_path / "wrong", "demo", length=5)
    assert cli_main(["projector", "apply", "--projector", str(out), "--prompt", wrong,
                     "--output_dir", str(tmp_path / "w")]) == 2
    with pytest.raises(UserError, match="was trained on tiny:bert, not --source_model tiny:t5"):
        from ds_prompt.recipes.projector import ProjectorTrainConfig, train_projector
        train_projector(ProjectorTrainConfig(source_model="tiny:t5", target_model="tiny:gpt2", prompts=src))


# ---- TPT speedup -----------------------------------------------------------------------------------------------
def test_speedup_helpers():
    from ds_prompt.transfer.speedup import learning_curve, steps_to_reach
    m = {"accuracy_before": 0.5, "history": [{"step": 2, "accuracy": 0.6}, {"step": 4, "accuracy": 0.7}],
         "steps": 6, "accuracy": 0.7}
    curve = learning_curve(m)
    assert curve == [(0, 0.5), (2, 0.6), (4, 0.7), (6, 0.7)]
    assert steps_to_reach(curve, 0.7) == 4 and steps_to_reach(curve, 0.5) == 0 and steps_to_reach(curve, 0.9) is None


def test_speedup_cli_on_tiny(tmp_path):
    src = make_prompt(tmp_path / "src", "demo", arch="bert", length=4, scale=0.02)
    out = tmp_path / "sp"
    rc = cli_main(["transfer", "speedup", "--prompt", src, "--model", "tiny:bert", "--task", "demo",
                   "--max_steps", "4", "--eval_every", "2", "--batch_size", "8", "--train_limit", "32",
                   "--eval_limit", "16", "--deepspeed", "zero0_cpu", "--output_dir", str(out), "--progress", "false",
                   "--log_every", "2"])
    assert rc == 0
    s = json.loads((out / "speedup.json").read_text())
    assert [p[0] for p in s["curves"]["random"]] == [0, 2, 4] and s["init"]["transfer"] == f"file:{src}"
    assert s["steps_to_target"]["random"] is not None and s["target_accuracy"] == s["final_accuracy"]["random"]
    from ds_prompt.models.tiny import build_tiny
    from ds_prompt.transfer.speedup import matmul_params
    tokens = json.loads((out / "random" / "metrics.json").read_text())["tokens"]
    n_params = matmul_params(build_tiny("bert")[0])
    assert n_params == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32  # 2 layers + MLM transform; no embeddings
    assert s["flops_to_target"]["random"] == pytest.approx(s["steps_to_target"]["random"] * 4 * n_params * tokens / 4)
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "transfer" / "prompt.json").read_text())["prompt_length"] == 4


# ---- prompt library --------------------------------------------------------------------------------------------
def test_library_add_list_recommend_and_resolve(tmp_path, capsys):
    from ds_prompt.transfer.library_index import library_entries, resolve_library_init
    lib = str(tmp_path / "lib")
    for i, task in enumerate(("sst2", "rte")):
        assert cli_main(["library", "add", "--prompt", make_prompt(tmp_path / task, task, seed=i),
                         "--library", lib]) == 0
    assert cli_main(["library", "add", "--prompt", str(tmp_path / "sst2"), "--library", lib]) == 2  # duplicate
    assert [e["name"] for e in library_entries(lib, model="tiny:bert")] == ["rte", "sst2"]
    assert cli_main(["library", "list", "--library", lib]) == 0
    assert "sst2" in capsys.readouterr().out
    with pytest.raises(UserError, match="no recommendation"):
        resolve_library_init(f"library:{lib}#best")
    rc = cli_main(["library", "recommend", "--task", "demo", "--model", "tiny:bert", "--library", lib,
                   "--max_steps", "2", "--batch_size", "8", "--train_limit", "16", "--eval_limit", "8",
                   "--deepspeed", "zero0_cpu", "--metric", "cos_token"])
    assert rc == 0
    rec = json.loads((tmp_path / "lib" / "recommendation.json").read_text())
    ranking = rec["ranking"]
    assert rec["task"] == "demo" and [r["rank"] for r in ranking] == [1, 2]
    assert ranking[0]["cos_token"] >= ranking[1]["cos_token"] and all(0 <= r["on"] <= 1 for r in ranking)
    assert resolve_library_init(f"library:{lib}#best") == os.path.join(lib, ranking[0]["name"])
    assert resolve_library_init(f"library:{lib}#best", task="demo", model="tiny:bert").endswith(ranking[0]["name"])
    assert resolve_library_init(f"library:{lib}#rte") == os.path.join(lib, "rte")
    with pytest.raises(UserError, match="no entry 'nope'"):
        resolve_library_init(f"library:{lib}#nope")
    run = tmp_path / "from_best"  # training from library:best records which prompt it chose
    assert cli_main(["train", "--model", "tiny:bert", "--task", "demo", "--init", f"library:{lib}#best",
                     "--max_steps", "1", "--batch_size", "8", "--train_limit", "8", "--eval_limit", "8",
                     "--prompt_length", "4", "--progress", "False", "--output_dir", str(run)]) == 0
    meta = json.loads((run / "prompt.json").read_text())
    assert meta["init"] == f"library:{lib}#best"
    assert meta["init_resolved"] == "file:" + os.path.join(lib, ranking[0]["name"])


# ---- ZeRO-3 --------------------------------------------------------------------------------------------------
ZERO3_SCRIPT = """
import json, sys, torch
from ds_prompt import dist
from ds_prompt.engine import setup
from ds_prompt.models.backbone import load_backbone
from ds_prompt.transfer.indicators import NeuronProbe, NeuronRecorder
setup.init_distributed()
bb = load_backbone("tiny:bert", dtype="fp32")
recorder = NeuronRecorder(bb, NeuronProbe(task="demo", samples=2, position=0), 4, deepspeed=sys.argv[2])
prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
masks = recorder.masks(prompt)
ffn = bb.model.bert.encoder.layer[0].intermediate.dense.weight
partitioned = hasattr(ffn, "ds_id") and ffn.ds_tensor.numel() < ffn.ds_numel
if dist.is_rank0():
    json.dump({"masks": {k: v.int().tolist() for k, v in masks.items()}, "partitioned": partitioned,
               "world": dist.world_size()}, open(sys.argv[1], "w"))
"""


@pytest.mark.multiproc
def test_neuron_masks_under_zero3_match_one_process(tmp_path):
    script = tmp_path / "zero3_masks.py"
    script.write_text(ZERO3_SCRIPT)
    config = json.loads(open(os.path.join(REPO, "ds_configs", "zero3.json")).read())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even tiny FFN weights
    (tmp_path / "zero3_all.json").write_text(json.dumps(config))
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    from tests.test_engine import free_port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(script), str(tmp_path / "zero3.json"), str(tmp_path / "zero3_all.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads((tmp_path / "zero3.json").read_text())
    assert got["world"] == 2 and got["partitioned"]
    from ds_prompt.models.backbone import load_backbone
    recorder = ind.NeuronRecorder(load_backbone("tiny:bert", dtype="fp32"),
                                  ind.NeuronProbe(task="demo", samples=2, position=0), 4)
    ref = recorder.masks(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)))
    assert got["masks"] == {k: v.int().tolist() for k, v in ref.items()}


@pytest.mark.multiproc
def test_projector_training_under_two_rank_zero3_matches_one_rank(tmp_path):
    from safetensors.torch import load_file
    src = make_prompt(tmp_path / "src", "demo", arch="bert")
    config = json.loads(open(os.path.join(REPO, "ds_configs", "zero3.json")).read())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition the projector too
    (tmp_path / "zero3_all.json").write_text(json.dumps(config))
    flags = ["projector", "train", "--source_model", "tiny:bert", "--target_model", "tiny:gpt2", "--prompts", src,
             "--max_steps", "4", "--batch_size", "8", "--train_limit", "32", "--eval_limit", "8", "--hidden", "16",
             "--progress", "false", "--log_every", "2"]
    assert cli_main(flags + ["--output_dir", str(tmp_path / "one"), "--deepspeed", "zero0_cpu"]) == 0
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    from tests.test_engine import free_port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "ds_prompt.cli"] + flags + ["--output_dir", str(tmp_path / "two"),
                                             "--deepspeed", str(tmp_path / "zero3_all.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = load_file(str(tmp_path / "one" / "projector.safetensors"))
    two = load_file(str(tmp_path / "two" / "projector.safetensors"))
    assert set(one) == set(two) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "norm.weight",
                                    "norm.bias"}
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)


def test_train_init_library_best_starts_from_the_top_prompt(tmp_path):
    """`train --init library:DIR#best` starts from the recommended entry: the trainer resolves the spec (the
    model layer refuses an unresolved one: it does not read libraries)."""
    from ds_prompt.config import TrainConfig, build_config
    from ds_prompt.models import soft_prompt
    from ds_prompt.recipes.prompt_tuning import train
    from ds_prompt.transfer.library_index import add_to_library, save_recommendation
    lib = str(tmp_path / "lib")
    add_to_library(make_prompt(tmp_path / "sst2", "sst2"), lib)
    save_recommendation(lib, "demo", "tiny:bert", [{"rank": 1, "name": "sst2"}], "on")
    with pytest.raises(UserError, match="must be resolved to its file first"):
        soft_prompt.init_prompt_tensor(f"library:{lib}#best", 4, torch.nn.Embedding(3, 32), None, 0)
    out = tmp_path / "run"
    train(build_config(TrainConfig, None, model="tiny:bert", task="demo", init=f"library:{lib}#best",
                       prompt_length=4, max_steps=1, lr=1e-9, batch_size=8, train_limit=8, eval_limit=8,
                       eval_every=0, save_every=0, progress=False, output_dir=str(out), deepspeed="zero0_cpu"))
    torch.testing.assert_close(load_prompt(out)[0], load_prompt(tmp_path / "sst2")[0], rtol=0, atol=1e-6)


def test_projector_killed_mid_step_resumes_to_the_uninterrupted_result(tmp_path):
    """The projector trains through the shared loop: checkpoints every --save_every steps, and a run killed
    inside a step (DS_PROMPT_FAULT) resumes from the last checkpoint to the projector an uninterrupted run gets."""
    from safetensors.torch import load_file
    src = make_prompt(tmp_path / "src", "demo", arch="bert")
    flags = ["projector", "train", "--source_model", "tiny:bert", "--target_model", "tiny:gpt2", "--prompts", src,
             "--max_steps", "6", "--batch_size", "8", "--train_limit", "32", "--eval_limit", "8", "--hidden", "16",
             "--progress", "false", "--log_every", "2", "--save_every", "2"]
    assert cli_main(flags + ["--output_dir", str(tmp_path / "straight")]) == 0
    env = dict(subprocess_env(), DS_PROMPT_FAULT="mid_step:5")
    killed = subprocess.run([sys.executable, "-m", "ds_prompt.cli", *flags, "--output_dir", str(tmp_path / "resumed")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert not (tmp_path / "resumed" / "projector.safetensors").exists()
    assert cli_main(flags + ["--output_dir", str(tmp_path / "resumed")]) == 0
    straight = load_file(str(tmp_path / "straight" / "projector.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "projector.safetensors"))
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)
    before = json.loads((tmp_path / "straight" / "projector.json").read_text())["metrics"]["before"]
    assert json.loads((tmp_path / "resumed" / "projector.json").read_text())["metrics"]["before"] == before


def test_backbone_names_compare_as_canonical_paths(tmp_path, monkeypatch):
    """A local model recorded as typed (`m`, before 2026-12-03) and absolute (since) is one backbone; aliases,
    tiny:<arch> and hub ids stay as given."""
    from ds_prompt.models.backbone import canonical_model
    from ds_prompt.transfer.prompt_set import PromptRef, common_backbone
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    assert canonical_model("m") == str(tmp_path / "m") == canonical_model(str(tmp_path / "m"))
    for name in ("minilm", "smollm2", "tiny:bert", "org/not-a-local-folder", None):
        assert canonical_model(name) == name
    t = torch.zeros(2, 4)
    refs = [PromptRef("a", "a", t, {"backbone": "m"}, {}),
            PromptRef("b", "b", t, {"backbone": str(tmp_path / "m")}, {})]
    assert common_backbone(refs) == str(tmp_path / "m")
    with pytest.raises(UserError, match="prompts come from backbones"):
        common_backbone(refs + [PromptRef("c", "c", t, {"backbone": "tiny:bert"}, {})])
