"""Prompt transferability (Su et al., NAACL 2022; REFERENCE §1), built from the shared pieces:

- `matrix`: zero-shot cross-task transfer matrix (+ random-prompt baseline) and its heatmap;
- `projector`: cross-model projector, trained through the frozen target model, and applied to prompts;
- `speedup`: transferred-init prompt tuning (TPT) vs random init, steps and FLOPs to a target accuracy;
- `indicators` + `activations`: embedding similarities and activated-neuron overlap (ON), Spearman vs transfer;
- `library`: prompt sets and a prompt library ranked for a new task (`--init library:best`);
- `plots`, `cli`.
"""
