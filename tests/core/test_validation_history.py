"""The rules taken from the recorded validation losses (torch-free): best step, early stop, resumed steps."""

from core.train.validation_history import ValidationHistory


def history(losses, patience=0, start=100, every=100) -> ValidationHistory:
    h = ValidationHistory(patience=patience)
    for i, loss in enumerate(losses):
        h.add({"step": start + i * every, "loss": loss, "seconds": 0.5})
    return h


def test_the_best_is_the_lowest_loss_and_a_tie_keeps_the_earlier_step():
    h = history([0.30, 0.25, 0.27, 0.25, 0.26])
    assert h.best["step"] == 200 and h.evals_since_best == 3
    assert h.summary()["best_loss"] == 0.25 and h.summary()["seconds"] == 2.5


def test_early_stop_after_patience_evaluations_without_a_strictly_lower_loss():
    assert not history([0.30, 0.25, 0.27], patience=2).should_stop
    assert history([0.30, 0.25, 0.27, 0.25], patience=2).should_stop  # an equal loss is no improvement
    assert not history([0.30, 0.25, 0.27, 0.24], patience=2).should_stop
    assert not history([0.30, 0.31, 0.32, 0.33], patience=0).should_stop  # 0: never


def test_a_repeated_step_replaces_the_later_points_and_the_state_round_trips():
    h = history([0.30, 0.25, 0.27])
    h.baseline = {"step": 0, "loss": 0.40, "seconds": 1.0}
    assert h.add({"step": 200, "loss": 0.20})  # a resume that went back to step 200
    assert [p["step"] for p in h.points] == [100, 200]
    again = ValidationHistory.from_dict(h.to_dict(), patience=3)
    assert again.points == h.points and again.baseline == h.baseline and again.patience == 3
    assert again.summary()["baseline"] == 0.40 and again.summary()["series"][-1] == {"step": 200, "loss": 0.20}
