"""Data in the layouts people actually have: `datasets.save_to_disk` folders (a DatasetDict, or one Dataset per
split), the hub's parquet shards under data/, sharded and gzipped JSONL; checked against the records written
with the real `datasets` / pyarrow / gzip calls; malformed lines are still named by file and line."""
import gzip
import json

import pytest

from ds_prompt.data.loading import load_examples
from ds_prompt.data.tasks import get_task
from ds_prompt.errors import UserError

SST2 = get_task("sst2")
TRAIN = [{"text": f"review number {i}", "label": i % 2, "idx": i} for i in range(7)]
VALID = [{"text": f"held out {i}", "label": "positive" if i % 3 else "negative"} for i in range(4)]


def _want(records):
    return [(r["text"], r["label"] if isinstance(r["label"], int) else SST2.labels.index(r["label"]))
            for r in records]


def _got(examples):
    return [(e.texts[0], e.label) for e in examples]


def test_save_to_disk_dataset_dict_and_split_folders(tmp_path):
    from datasets import Dataset, DatasetDict
    DatasetDict({"train": Dataset.from_list(TRAIN),
                 "validation": Dataset.from_list([dict(r, label=SST2.labels.index(r["label"])) for r in VALID])}
                ).save_to_disk(str(tmp_path / "root" / "sst2"))
    assert _got(load_examples(SST2, "train", str(tmp_path / "root"))) == _want(TRAIN)  # <root>/<task>/
    assert _got(load_examples(SST2, "eval", str(tmp_path / "root" / "sst2"))) == _want(VALID)  # the folder itself
    Dataset.from_list(TRAIN).save_to_disk(str(tmp_path / "splits" / "train"))  # one split of it
    assert _got(load_examples(SST2, "train", str(tmp_path / "splits"), limit=3, seed=1)) == \
        [_want(TRAIN)[i] for i in sorted(__import__("random").Random(1).sample(range(7), 3))]
    Dataset.from_list([{"text": "x", "label": 7}]).save_to_disk(str(tmp_path / "bad" / "train"))
    with pytest.raises(UserError, match=r"bad/train: row 1: label id 7 is out of range"):
        load_examples(SST2, "train", str(tmp_path / "bad"))


def test_hub_parquet_shards_under_data(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = tmp_path / "sst2" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(TRAIN[4:]), folder / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(TRAIN[:4]), folder / "train-00000-of-00002.parquet")
    assert _got(load_examples(SST2, "train", str(tmp_path))) == _want(TRAIN)  # shards in name order


def test_gzipped_and_sharded_jsonl(tmp_path):
    folder = tmp_path / "sst2"
    folder.mkdir()
    with gzip.open(folder / "validation.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in VALID)
    for k, part in enumerate((TRAIN[:3], TRAIN[3:])):
        (folder / f"train-{k:05d}-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    assert _got(load_examples(SST2, "eval", str(folder))) == _want(VALID)
    assert _got(load_examples(SST2, "train", str(folder))) == _want(TRAIN)
    with gzip.open(folder / "validation.jsonl.gz", "wt") as f:
        f.write(json.dumps(VALID[0]) + "\n{broken\n")
    with pytest.raises(UserError, match=r"validation\.jsonl\.gz:2: not valid JSON"):
        load_examples(SST2, "eval", str(folder))
