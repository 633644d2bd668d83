"""Strict flags (ds_prompt.cli_args): every flag is checked against the command's signature or config before
any work starts (one error line, exit 2, nothing written), and --help is generated from the same sources."""
import dataclasses
import re

import pytest

from ds_prompt.cli import _commands, main
from ds_prompt.cli_args import check_argv, flags_of, help_text
from ds_prompt.config import TrainConfig
from ds_prompt.errors import UserError


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, [ln for ln in captured.err.splitlines() if ln.startswith("ds-prompt: error")], captured.out


# Every case also names a model or prompt that does not exist: were the flags checked after loading, the
# error would be about that instead.
MISSING = "/no/such/model"


MISTYPED = {  # the cases: each used to do its work first and complain afterwards
    "evaluate": (["evaluate", "--prompt", "{tmp}/p", "--limt", "16"], "--limt", "--limit"),
    "export": (["export", "--prompt", "{tmp}/p", "--fromat", "peft", "--output_dir", "{tmp}/out"], "--fromat",
               "--format"),
    "transfer matrix": (["transfer", "matrix", "--prompts", "{tmp}/p", "--sed", "3", "--output_dir", "{tmp}/out"],
                        "--sed", "--seed"),
    "spt evaluate": (["spt", "evaluate", "--bank", "{tmp}/p", "--batchsize", "8", "--output_dir", "{tmp}/out"],
                     "--batchsize", "--batch_size"),
    "train": (["train", "--model", MISSING, "--lrr", "0.1", "--output_dir", "{tmp}/out"], "--lrr", "--lr"),
    "fpt": (["fpt", "--plan", "ld", "--model", MISSING, "--max_step", "10", "--output_dir", "{tmp}/out"],
            "--max_step", "--max_steps"),
    "spt train": (["spt", "train", "--model", MISSING, "--bank_sise", "4", "--output_dir", "{tmp}/out"],
                  "--bank_sise", "--bank_size"),
    "projector train": (["projector", "train", "--target_model", MISSING, "--hiden", "4", "--output_dir",
                         "{tmp}/out"], "--hiden", "--hidden"),
}


@pytest.mark.parametrize("case", sorted(MISTYPED))
def test_a_mistyped_flag_is_one_error_line_and_nothing_is_written(case, tmp_path, capsys):
    argv, bad, hint = MISTYPED[case]
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, errors, _ = run(argv, capsys)
    assert code == 2 and len(errors) == 1, errors
    assert f"unknown flag {bad} for `ds-prompt {case}`: did you mean {hint}?" in errors[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


BAD_VALUES = {
    "choice": (["train", "--model", MISSING, "--scheduler", "cosine_annealing"],
               "unknown --scheduler 'cosine_annealing': use one of constant, constant_with_warmup, linear, cosine"),
    "optimizer": (["fpt", "--plan", "ld", "--model", MISSING, "--optimizer", "sgd"], "unknown --optimizer 'sgd'"),
    "head": (["spt", "train", "--model", MISSING, "--head", "mlp"], "unknown --head 'mlp'"),
    "dtype of a typed signature": (["evaluate", "--prompt", "p", "--dtype", "fp8"], "unknown --dtype 'fp8'"),
    "quantization": (["train", "--model", MISSING, "--quantization", "nf8"], "unknown --quantization 'nf8'"),
    "family any case ok, bad one not": (["train", "--family", "Decoder"], "unknown --family 'Decoder'"),
    "int": (["evaluate", "--prompt", "p", "--limit", "many"], "--limit 'many' is not a valid int"),
    "float": (["train", "--lr", "fast"], "--lr 'fast' is not a valid float"),
    "bool": (["train", "--resume", "maybe"], "--resume 'maybe' is not a valid bool"),
    "init spec": (["train", "--init", "zeros"], "unknown --init 'zeros'"),
    "value missing": (["train", "--max_steps"], "--max_steps needs a value"),
    "repeated, last bad": (["train", "--lr", "1", "--lr", "x"], "--lr 'x' is not a valid float"),
    "stray positional": (["export", "p", "peft", "out", "extra"], "unexpected argument(s) extra"),
    "unknown command": (["transfer", "matirx"], "unknown command 'matirx' for `ds-prompt transfer`: did you mean "
                                                "'matrix'?"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_refused_when_parsed(case, capsys):
    argv, needle = BAD_VALUES[case]
    code, errors, _ = run(argv, capsys)
    assert code == 2 and len(errors) == 1 and needle in errors[0], errors


def test_fire_spellings_pass_the_check():
    commands = _commands()
    for argv in (["train", "--noresume", "--progress", "--max_steps", "1e3", "--lr=1e-2", "--eval_limit", "None",
                  "--family", "CAUSAL"],
                 ["evaluate", "some/prompt", "--limit", "1e3"], ["export", "p", "--format=peft"],
                 ["fpt", "ld", "--score_samples", "10", "--lr", "0.1"], ["spt", "train", "--tasks", "sst2,rte"]):
        check_argv(commands, argv)
    with pytest.raises(UserError, match="--nomax_steps"):
        check_argv(commands, ["train", "--nomax_steps"])  # --noX negates bool flags only


def test_train_help_lists_every_config_field_with_its_comment(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert re.search(rf"^  --{f.name} ", out, re.M), f.name
    assert "--schedule_steps INT (default None)  steps the LR schedule spans" in out
    assert "--scheduler constant|constant_with_warmup|linear|cosine|" in out
    assert "--plan" in help_text(_commands(), ["fpt"]) and "--weight_decay" in help_text(_commands(), ["fpt"])


def test_top_level_help_lists_groups_and_hides_internal_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "predict", "generate", "export", "transfer", "fpt", "spt"):
        assert re.search(rf"^  {name} ", out, re.M), name
    for hidden in ("fpt_stage", "indicators", "projector", "library"):  # internal, or now under `transfer`
        assert not re.search(rf"^  {hidden} ", out, re.M), hidden
    assert main(["transfer", "--help"]) == 0
    listed = capsys.readouterr().out
    assert all(re.search(rf"^  {n} ", listed, re.M)
               for n in ("matrix", "speedup", "indicators", "projector", "library"))
    assert main(["spt", "--help"]) == 0 and "export" in capsys.readouterr().out
    commands = _commands()  # the former spellings still resolve to the same functions
    assert commands["indicators"] is commands["transfer"]["indicators"]
    assert commands["projector"]["train"] is commands["transfer"]["projector"]["train"]
    with pytest.raises(UserError, match=r"--hiden for `ds-prompt transfer projector train`: did you mean --hidden"):
        check_argv(commands, ["transfer", "projector", "train", "--hiden", "3"])


def test_every_command_has_checkable_flags():
    """Every leaf command's flags resolve (a **flags command without a registered config would skip checks)."""
    def leaves(node, path=()):
        for name, sub in node.items():
            yield from leaves(sub, path + (name,)) if isinstance(sub, dict) else [(path + (name,), sub)]
    for path, fn in leaves(_commands()):
        assert flags_of(path, fn), path


def test_init_spec_is_parsed_into_its_typed_form():
    from ds_prompt.config import InitSpec
    assert InitSpec.parse("normal") == InitSpec("normal") and InitSpec.parse("normal").std == 0.02
    assert InitSpec.parse("normal:0.5").std == 0.5
    assert InitSpec.parse("file:C:/runs/p") == InitSpec("file", "C:/runs/p")  # only the first ':' splits
    for text in ("normal:0.5", "uniform", "vocab", "text:classify the sentiment", "file:a/b", "library:best"):
        spec = InitSpec.parse(text)
        assert str(spec) == text and InitSpec.parse(spec) is spec
    for bad, needle in (("normal:-1", "finite number > 0"), ("normal:x", "must be a number"),
                        ("vocab:3", "vocab takes no argument"), ("text: ", "needs a value after 'text:'"),
                        ("zeros", "unknown --init 'zeros'")):
        with pytest.raises(UserError, match=re.escape(needle)):
            InitSpec.parse(bad)


def test_default_output_folders_name_a_local_model_by_its_file_not_its_whole_path(tmp_path, monkeypatch):
    """`--model /abs/dir/m.gguf` with no --output_dir writes runs/<task>-m-<6 hex of its path>, not
    runs/<task>-_abs_dir_m.gguf; two models sharing a file name get two folders; hub ids and aliases keep their
    spelling with `/` and `:` made `_`; the same rule for every recipe."""
    import hashlib

    from ds_prompt.config import model_slug
    from ds_prompt.recipes.projector import ProjectorTrainConfig
    from ds_prompt.recipes.spt import SPTConfig
    gguf = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    folder = tmp_path / "models" / "llama-hf"
    folder.mkdir()
    twin = tmp_path / "other" / "llama-hf"
    twin.mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "models")

    def tag(path):
        return hashlib.sha1(str(path).encode()).hexdigest()[:6]
    smol, hf = f"SmolLM2-135M-Instruct.Q4_1-{tag(gguf)}", f"llama-hf-{tag(folder)}"
    assert model_slug(str(gguf)) == model_slug("SmolLM2-135M-Instruct.Q4_1.gguf") == smol
    assert model_slug(str(folder) + "/") == model_slug("./llama-hf") == hf != model_slug(str(twin))
    assert model_slug("org/model") == "org_model" and model_slug("tiny:gpt2") == "tiny_gpt2"
    assert model_slug("smollm2") == "smollm2" and model_slug(None) == "unknown"
    assert TrainConfig(model=str(gguf), task="sst2").resolved_output_dir() == f"runs/sst2-{smol}"
    assert SPTConfig(model=str(folder), mode="shared").resolved_output_dir() == f"runs/spt-{hf}-shared"
    projector = ProjectorTrainConfig(target_model=str(gguf))
    assert projector.resolved_output_dir(str(folder)) == f"runs/projector-{hf}-to-{smol}"
