"""DeepSpeed configs shipped with ds_prompt (package data: installed as ds_prompt.ds_configs)."""
