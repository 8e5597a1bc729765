"""Logged values are read one step late (core.train.readout): the next step is queued before a report waits
for its values, and a step's report still comes before its checkpoint, and before a stop's checkpoint."""

from __future__ import annotations

import pytest
import torch
from test_train import config, flat_images, tiny  # noqa: F401  (module fixtures)

from core.train import TrainCallbacks, Trainer
from core.train.readout import StepReports


def test_reports_come_oldest_first_and_only_for_earlier_steps():
    reports = StepReports(torch.device("cpu"))
    for step in (1, 2, 3):
        reports.push(step, torch.tensor([step / 10, 0.0]), lr=0.5)
    assert [s for s, _, _ in reports.take(before_step=3)] == [1, 2]
    assert len(reports) == 1
    ((step, values, extra),) = reports.take()
    assert step == 3 and values == pytest.approx([0.3, 0.0]) and extra == {"lr": 0.5}
    assert reports.take() == []


def test_a_report_follows_the_next_step_and_precedes_its_checkpoint(tiny, flat_images, tmp_path):  # noqa: F811
    events = []
    asked = []
    cb = TrainCallbacks(
        on_step=lambda step, *a: events.append(("report", step)),
        on_checkpoint=lambda step, path: events.append(("checkpoint", step)),
        # asked before every step: the 6th question (before step 6) stops the run after step 5
        should_stop=lambda: asked.append(1) or len(asked) >= 6,
    )
    trainer = Trainer(config(tiny, flat_images, tmp_path, steps=8, checkpoint_every=3), cb)
    step = trainer.train_step

    def logged_step(batches):
        out = step(batches)
        events.append(("step", trainer.step))
        return out

    trainer.train_step = logged_step
    result = trainer.run()
    assert result.stopped and result.steps_done == 5
    assert events == [
        ("step", 1),
        ("step", 2),
        ("report", 1),  # step 1's values are read once step 2 is queued
        ("step", 3),
        ("report", 2),
        ("report", 3),  # checkpoint steps read their own values first
        ("checkpoint", 3),
        ("step", 4),
        ("step", 5),
        ("report", 4),
        ("report", 5),  # a stop reads what is left before its checkpoint
        ("checkpoint", 5),
    ]
