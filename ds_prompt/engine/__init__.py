"""The engine: plumbing every recipe shares, and nothing recipe-specific.

- `setup`: process group, DeepSpeed config resolution (one config per ZeRO setup, precision from --dtype),
  engine, optimizer and LR schedule;
- `loop`: the step loop (micro-batches, logging windows, eval and checkpoint cadence) over a `LoopArgs` group;
- `state`: trainable state checkpoints (save, consolidate under ZeRO, restore at any world size);
- `evaluate`: accuracy / F1 / Matthews of a scoring model over encoded examples;
- `logging`, `progress`: TensorBoard, progress bars, interruption; `run_folder`: claiming and identity of a run.

The recipes (ds_prompt.recipes) compose these; nothing here imports a recipe or a method package.
"""
