"""Prompt transferability (Su et al., NAACL 2022; REFERENCE §1), built from the shared pieces:

- `matrix`: zero-shot cross-task transfer matrix (+ random-prompt baseline) and its heatmap;
- `projector`: the cross-model projector (model, artifact, `apply`); its training is the recipe
  `ds_prompt.recipes.projector`;
- `speedup`: TPT measurements (learning curves, steps and FLOPs to a target accuracy); the two-run job is the
  recipe `ds_prompt.recipes.tpt`;
- `indicators` + `activations`: embedding similarities and activated-neuron overlap (ON), Spearman vs transfer;
- `library_index` + `prompt_set`: prompt sets and the prompt library on disk (`--init library:best`); ranking a
  library for a new task is the recipe `ds_prompt.recipes.library`;
- `plots`, `cli`.
"""
