"""Evaluation metrics (engine.evaluate): F1 and Matthews correlation from the summed confusion matrix equal
scikit-learn's on the same predictions; every evaluation reports them; tasks name their headline metric."""
import pytest
import torch
from sklearn.metrics import f1_score, matthews_corrcoef

from ds_prompt.data.tasks import get_task
from ds_prompt.engine.evaluate import class_metrics, evaluate
from tests.helpers import SENTENCES, batch_of, prompted_tiny


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_confusion_metrics_equal_sklearn(classes):
    gen = torch.Generator().manual_seed(classes)
    for trial in range(20):
        gold = torch.randint(0, classes, (50,), generator=gen)
        predicted = torch.where(torch.rand(50, generator=gen) < 0.6, gold,
                                torch.randint(0, classes, (50,), generator=gen))
        confusion = torch.zeros(classes, classes, dtype=torch.float64)
        confusion.index_put_((gold, predicted), torch.ones(50, dtype=torch.float64), accumulate=True)
        got = class_metrics(confusion)
        average = "binary" if classes == 2 else "macro"
        assert got["f1"] == pytest.approx(f1_score(gold, predicted, average=average, zero_division=0), abs=1e-12)
        assert got["matthews"] == pytest.approx(matthews_corrcoef(gold, predicted), abs=1e-12)
    constant = torch.zeros(classes, classes, dtype=torch.float64)
    constant[:, 0] = 5  # always predicts class 0: MCC undefined -> 0, as scikit-learn
    assert class_metrics(constant)["matthews"] == 0.0 == matthews_corrcoef([0, 1] * 5, [0] * 10)


def test_evaluate_reports_f1_and_matthews_of_its_predictions():
    bb, model, enc = prompted_tiny("bert")
    encoded, batch = batch_of(bb, enc, SENTENCES * 3, labels=[0, 1, 2, 1] * 3)
    result = evaluate(model, encoded, 5, bb.tokenizer.pad_token_id, False, torch.device("cpu"))
    with torch.no_grad():
        predicted = model(batch["input_ids"], batch["attention_mask"], batch["score_index"]).argmax(-1)
    gold = batch["labels"]
    assert result["n"] == 12
    assert result["accuracy"] == pytest.approx((predicted == gold).double().mean().item())
    assert result["f1"] == pytest.approx(f1_score(gold, predicted, average="macro", zero_division=0))
    assert result["matthews"] == pytest.approx(matthews_corrcoef(gold, predicted))


def test_glue_headline_metrics():
    assert {t: get_task(t).metric for t in ("sst2", "cola", "mrpc", "qqp", "rte")} == {
        "sst2": "accuracy", "cola": "matthews", "mrpc": "f1", "qqp": "f1", "rte": "accuracy"}
