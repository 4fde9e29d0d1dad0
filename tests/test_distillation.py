"""Distillation from a collaborative teacher during SFT (train.distill): the soft targets
against hand computations, the prefixes read from compact windows, the loss, the config's
refusals, and a student that learns the synthetic rule from the teacher alone."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_scratch import SCRATCH

from semrec.config import ConfigError, load_config
from semrec.data import DATASET_LOADERS
from semrec.data.split import leave_one_out
from semrec.models.distillation import TeacherDistillation
from semrec.pipeline import Run
from semrec.prompts.compact import CompactSequences

TINY = Path(__file__).resolve().parents[1] / "experiments" / "tiny.yaml"
# four items, two levels: tokens 10/11 at level 0, 20/21/22 at level 1
CODES = [[10, 20], [10, 21], [11, 20], [11, 22]]


class FixedTeacher:
    """Scores ``log(probs)`` after every history; records the histories it was asked for."""

    def __init__(self, probs: list[float]) -> None:
        self.logits = torch.tensor(probs).log()
        self.histories: list[list[int]] = []

    def score(self, histories):
        self.histories.extend(list(h) for h in histories)
        return self.logits.expand(len(histories), -1).clone()


def test_soft_targets_are_the_teachers_marginals_given_the_targets_earlier_codes() -> None:
    distill = TeacherDistillation(FixedTeacher([0.1, 0.2, 0.3, 0.4]), CODES, max_history=3)
    assert distill.sid_ids.tolist() == [10, 11, 20, 21, 22]
    soft, tokens = distill.soft_targets([[2], [0]], torch.tensor([1, 3]))
    assert tokens.tolist() == [10, 21, 11, 22]  # target by target, level by level
    expected = torch.tensor(
        [
            [0.3, 0.7, 0.0, 0.0, 0.0],  # level 0: every item, summed per first code
            [0.0, 0.0, 0.1 / 0.3, 0.2 / 0.3, 0.0],  # level 1 of item 1: items 0, 1 (code 10)
            [0.3, 0.7, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.3 / 0.7, 0.0, 0.4 / 0.7],  # level 1 of item 3: items 2, 3 (code 11)
        ]
    )
    torch.testing.assert_close(soft, expected, atol=1e-6, rtol=0)


def test_masked_history_and_temperature_change_the_teachers_distribution() -> None:
    teacher = FixedTeacher([0.1, 0.2, 0.3, 0.4])
    masked = TeacherDistillation(teacher, CODES, max_history=3, mask_history=True)
    soft, _ = masked.soft_targets([[0]], torch.tensor([1]))
    torch.testing.assert_close(soft[0], torch.tensor([0.2, 0.7, 0, 0, 0]) / 0.9)
    torch.testing.assert_close(soft[1], torch.tensor([0.0, 0, 0, 1, 0]))  # item 0 is masked
    # every item under the target's first code is in the history: the label itself
    soft, _ = masked.soft_targets([[0, 1]], torch.tensor([1]))
    torch.testing.assert_close(soft[1], torch.tensor([0.0, 0, 0, 1, 0]))

    hot = TeacherDistillation(teacher, CODES, max_history=3, temperature=2.0)
    soft, _ = hot.soft_targets([[2]], torch.tensor([1]))
    roots = torch.tensor([0.1, 0.2, 0.3, 0.4]).sqrt()
    first = torch.tensor([roots[:2].sum(), roots[2:].sum()]) / roots.sum()
    torch.testing.assert_close(soft[0, :2], first)


def test_the_loss_mixes_the_labels_and_the_soft_targets_as_by_hand() -> None:
    distill = TeacherDistillation(
        FixedTeacher([0.1, 0.2, 0.3, 0.4]), CODES, max_history=3, weight=0.25
    )
    # one window: items 0 (context), 1, 3 (targets); labels in the layout of the windows
    batch = {
        "window_items": torch.tensor([[0, 1, 3]]),
        "first_target": torch.tensor([1]),
        "labels": torch.tensor([[-100, -100, -100, -100, 10, 21, -100, 11, 22]]),
    }
    output_ids = torch.tensor([3, 10, 11, 20, 21, 22])  # one non-SID column too
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    parts = distill.loss(logits, batch, output_ids)

    log_p = torch.log_softmax(logits, dim=1)
    label_columns = [1, 4, 2, 5]
    label = -sum(log_p[k, c] for k, c in enumerate(label_columns)) / 4
    soft, _ = distill.soft_targets([[0], [0, 1]], torch.tensor([1, 3]))
    hand = -sum(float(soft[k, j]) * float(log_p[k, 1 + j]) for k in range(4) for j in range(5)) / 4
    assert math.isclose(float(parts["label"]), float(label), abs_tol=1e-6)
    assert math.isclose(float(parts["distill"]), hand, abs_tol=1e-6)
    assert math.isclose(float(parts["total"]), 0.75 * float(label) + 0.25 * hand, abs_tol=1e-6)

    # a teacher sure of every target gives the labels' own loss
    sure = TeacherDistillation(
        FixedTeacher([1e-9, 1 - 3e-9, 1e-9, 1e-9]), CODES, max_history=3, weight=1.0
    )
    single = {**batch, "window_items": torch.tensor([[0, 1]]), "labels": batch["labels"][:, :6]}
    parts = sure.loss(logits[:2], single, output_ids)
    assert math.isclose(float(parts["distill"]), float(parts["label"]), abs_tol=1e-5)

    # labels that are not the targets' SIDs (another layout) are refused
    wrong = {**batch, "labels": batch["labels"].flip(1)}
    with pytest.raises(ValueError, match="labelled tokens"):
        distill.loss(logits, wrong, output_ids)


def test_each_target_of_the_windows_gets_its_own_history() -> None:
    """Windows of 3 targets over the synthetic split: the teacher sees every training prefix's
    history (its last max_history items) in the order of the labels."""
    split = leave_one_out(DATASET_LOADERS.get("synthetic")(), max_history=4)
    codes = [[100 + item % 5, 200 + item // 5] for item in range(split.num_items)]
    source = CompactSequences(split, codes, sep_id=1, pad_id=0, max_history=4, window_items=3)
    teacher = FixedTeacher([1.0 / split.num_items] * split.num_items)
    distill = TeacherDistillation(teacher, codes, max_history=4)
    windows = source.epoch_items(0)
    seen: list[tuple[list[int], int]] = []
    for start in range(0, len(windows), 7):
        batch = source.collate(windows[start : start + 7])
        histories, targets = distill.prefixes(batch)
        seen.extend(zip(histories, targets.tolist(), strict=True))
        logits = torch.zeros(int((batch["labels"] != -100).sum()), 300)
        distill.loss(logits, batch)  # the labels line up with the targets' tokens
    assert seen == [(list(ex.history[-4:]), ex.target) for ex in split.train]


@pytest.mark.parametrize(
    ("base", "overrides", "message"),
    [
        ("tiny", ["train.distill={teacher: popularity}"], "not a sequential recommender"),
        ("tiny", ["train.distill={teacher: sasrec}"], "model.prompt_format: compact"),
        ("ttds_ml100k_scratch", ["train.distill={teacher: sasrec}"], "fixed SIDs"),
    ],
)
def test_distillation_configs_that_cannot_work_are_refused(base, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY.parent / f"{base}.yaml", overrides)


# test_scratch's small scratch model, with SASRec alone as the baseline and the teacher
SCRATCH_DISTILLED = [
    *(o for o in SCRATCH if not o.startswith("eval.baseline")),
    "train.progress_bar=false",
    "eval.baselines=[sasrec]",
    "eval.baseline_params={sasrec: {max_epochs: 20, batch_size: 16, num_threads: 1}}",
    # the teacher's targets alone: no label enters the loss
    "train.distill={teacher: sasrec, weight: 1.0}",
]


def test_a_student_learns_the_rule_from_the_teacher_alone(tmp_path: Path) -> None:
    """With weight 1 the loss holds no label, only SASRec's soft targets: the student still
    learns the synthetic rule (the scratch model reaches HR@1 >= .9 with labels, and so
    does SASRec), so the soft targets carry the teacher's ranking level by level."""
    lines: list[str] = []
    run_dir = tmp_path / "distilled"
    metrics = Run(load_config(TINY, SCRATCH_DISTILLED), run_dir, echo=lines.append).fit()
    assert metrics["sasrec/test/hr@1"] >= 0.9
    assert metrics["test/hr@1"] >= 0.9
    assert any(line.startswith("[train] distilling from sasrec (weight 1.0") for line in lines)
    # the teacher is the baseline row's model: fitted once, then reused from the cache
    assert any("sasrec" in line and "reused from the cache" in line for line in lines)
    logged = (next((run_dir / "logs").glob("version_*")) / "metrics.csv").read_text()
    assert "train/distill_loss" in logged and "train/label_loss" in logged


def test_no_teacher_is_fitted_when_nothing_trains(tmp_path: Path) -> None:
    overrides = [*SCRATCH_DISTILLED, "train.epochs=0", "eval.baselines=[]"]
    overrides.remove(
        "eval.baseline_params={sasrec: {max_epochs: 20, batch_size: 16, num_threads: 1}}"
    )
    lines: list[str] = []
    Run(load_config(TINY, overrides), tmp_path / "untrained", echo=lines.append).fit()
    assert any("skipped (train.epochs: 0)" in line for line in lines)
    assert not any("distilling" in line or "sasrec" in line for line in lines)
