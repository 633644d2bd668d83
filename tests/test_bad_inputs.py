"""Every CLI subcommand with bad values: exactly one `ds-prompt: error:` line naming the value, a non-zero
exit, and nothing written into the output folder. (train/evaluate/export are covered in test_cli.py.)"""
import pickle
import re

import pytest
import torch

from ds_prompt.artifacts import save_prompt
from ds_prompt.cli import main


@pytest.fixture
def prompts(tmp_path):
    """Two valid tiny-bert prompts and one of another width."""
    for name, d in (("p1", 32), ("p2", 32), ("wide", 48)):
        save_prompt(tmp_path / name, torch.randn(4, d), {"backbone": "tiny:bert", "family": "mlm", "task": "demo",
                                                        "head": "LabelWordHead", "max_length": 64})
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps({"prompt": [1.0]}))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "prompt.safetensors").write_bytes(b"\x01" * 40)
    return tmp_path


CASES = {
    "fpt unknown plan": (["fpt", "--plan", "nope", "--model", "tiny:bert"], r"--plan 'nope'"),
    "fpt unknown task": (["fpt", "--plan", "ld", "--model", "tiny:bert", "--task", "nope"], r"unknown task 'nope'"),
    "fpt missing data": (["fpt", "--plan", "ld", "--task", "sst2", "--data_dir", "{t}/missing"], r"does not exist"),
    "fpt bad deepspeed": (["fpt", "--plan", "ld", "--deepspeed", "zero9"], r"--deepspeed 'zero9'"),
    "fpt wrong type": (["fpt", "--plan", "ld", "--max_steps", "many"], r"--max_steps 'many'"),
    "fpt bad flag": (["fpt", "--plan", "ld", "--lrr", "1"],
                     r"unknown flag --lrr for `ds-prompt fpt`: did you mean --lr\?"),
    "matrix missing prompt": (["transfer", "matrix", "--prompts", "{t}/none", "--tasks", "demo"], r"does not exist"),
    "matrix pickle prompt": (["transfer", "matrix", "--prompts", "{t}/pickled.pt", "--tasks", "demo"],
                             r"never unpickles"),
    "matrix corrupt prompt": (["transfer", "matrix", "--prompts", "{t}/corrupt", "--tasks", "demo"], r"corrupt"),
    "matrix unknown task": (["transfer", "matrix", "--prompts", "{t}/p1", "--tasks", "nope"], r"unknown task 'nope'"),
    "indicators bad metric": (["indicators", "--prompts", "{t}/p1,{t}/p2", "--metric", "bogus"],
                              r"unknown --metric bogus"),
    "indicators width mismatch": (["indicators", "--prompts", "{t}/p1,{t}/wide", "--metric", "cos"], r"48|32"),
    "projector apply missing": (["projector", "apply", "--projector", "{t}/none", "--prompt", "{t}/p1"],
                                r"no projector"),
    "library empty": (["library", "recommend", "--task", "demo", "--model", "tiny:bert", "--library", "{t}/lib"],
                      r"has no prompts"),
    "speedup missing prompt": (["transfer", "speedup", "--prompt", "{t}/none", "--task", "demo"], r"does not exist"),
    "spt evaluate no bank": (["spt", "evaluate", "{t}/nobank"], r"no bank"),
    "spt train unknown task": (["spt", "train", "--model", "tiny:bert", "--tasks", "nope"], r"unknown task 'nope'"),
    "fpt quantized tiny": (["fpt", "--plan", "ld", "--model", "tiny:gpt2", "--quantization", "nf4"],
                           r"--quantization nf4 needs a model folder"),
    "evaluate width mismatch": (["evaluate", "--prompt", "{t}/wide", "--model", "tiny:bert"],
                                r"d=48 but the model expects 32"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_error_line_nonzero_exit_no_artifact(case, prompts, capsys):
    argv, needle = CASES[case]
    out = prompts / "out"
    argv = [a.replace("{t}", str(prompts)) for a in argv]
    if argv[0] not in ("evaluate",):
        argv += ["--output_dir", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("ds-prompt: error")]
    assert code != 0, (case, err[-2000:])
    assert len(errors) == 1, errors or err[-2000:]
    assert re.search(needle, errors[0]), errors[0]
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not written, written
