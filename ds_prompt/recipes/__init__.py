"""Recipes: whole jobs composed from the layers below them (config groups, models, data, engine, and the
methods' pieces in fpt/, spt/, transfer/). Each recipe is what one `ds-prompt` command runs:

- `prompt_tuning`: `ds-prompt train` (also the body of every FPT stage and of TPT / library runs);
- `inference`: `ds-prompt evaluate | predict | generate` on a saved prompt;
- `spt`: `ds-prompt spt train | evaluate`;
- `projector`: `ds-prompt transfer projector train`;
- `fpt_stage`: one stage process of `ds-prompt fpt` (started by fpt.scheduler);
- `tpt`: `ds-prompt transfer speedup` (random vs transferred init);
- `library`: `ds-prompt transfer library recommend` (a probe run, then indicators against every entry).

The engine (engine/) below them is plumbing only: process group and DeepSpeed setup, the step loop, trainable
state, evaluation, logging, run folders. It imports nothing from here, and neither do
the method packages (tests/test_layering.py).
"""
