"""The stage-2 guard's rule and the checkpoint selection rule (train/guard.py), without training."""

import math

from vitok.train.config import GuardSection
from vitok.train.guard import Guard


def _guard(**overrides) -> Guard:
    guard = Guard(GuardSection(**overrides))
    guard.set_reference(100, {"psnr": 30.0, "swd": 50.0, "sharpness": 0.60})
    return guard


def test_within_the_margin_nothing_happens():
    guard = _guard()
    assert guard.observe(150, {"psnr": 29.2, "swd": 40.0}) == (None, None)
    assert guard.state.events == [] and guard.state.gan_scale == 1.0


def test_backoff_halves_lambda_and_lr_then_stops():
    guard = _guard(max_backoffs=2, backoff_factor=0.5)
    message, decision = guard.observe(150, {"psnr": 28.5})
    assert decision is None and "1.50 dB below" in message and "backoff 1/2" in message
    assert (guard.state.gan_scale, guard.state.lr_scale) == (0.5, 0.5)
    assert guard.observe(200, {"psnr": 28.0})[1] is None
    assert (guard.state.gan_scale, guard.state.lr_scale) == (0.25, 0.25)
    message, decision = guard.observe(250, {"psnr": 27.0})
    assert decision == "stop" and "after 2 backoffs" in message
    assert [e["step"] for e in guard.state.events] == [150, 200, 250]
    assert math.isclose(guard.state.events[0]["drop_db"], 1.5)


def test_a_breach_after_training_is_recorded_not_acted_on():
    guard = _guard()
    message, decision = guard.observe(300, {"psnr": 25.0}, final=True)
    assert decision is None and "training had ended" in message and guard.state.gan_scale == 1.0
    assert guard.state.events[0]["step"] == 300 and guard.select()["step"] == 100


def test_stop_and_warn_actions_and_non_finite_psnr():
    assert _guard(action="stop").observe(150, {"psnr": 28.0})[1] == "stop"
    warn = _guard(action="warn")
    message, decision = warn.observe(150, {"psnr": 20.0})
    assert decision is None and "guard.action=warn" in message and warn.state.gan_scale == 1.0
    # A NaN PSNR is a breach, never "within the margin".
    assert _guard(action="stop").observe(150, {"psnr": float("nan")})[1] == "stop"


def test_selection_prefers_the_lowest_swd_within_the_margin():
    guard = _guard()
    guard.observe(150, {"psnr": 29.5, "swd": 30.0, "sharpness": 0.8})
    guard.observe(200, {"psnr": 28.0, "swd": 10.0, "sharpness": 0.95})  # lowest SWD, but 2 dB down
    guard.observe(250, {"psnr": 29.1, "swd": 35.0, "sharpness": 0.9})
    choice = guard.select()
    assert choice["step"] == 150 and choice["metric"] == "swd" and "within 1.0 dB" in choice["reason"]
    # Only checkpoints still on disk are candidates.
    assert guard.select(available={100, 250})["step"] == 250


def test_selection_keeps_stage_one_when_stage_two_never_helps():
    guard = _guard()
    guard.observe(150, {"psnr": 29.5, "swd": 60.0})
    guard.observe(200, {"psnr": 25.0, "swd": 5.0})
    assert guard.select()["step"] == 100


def test_selection_by_sharpness_and_by_psnr():
    guard = _guard(select="sharpness")
    guard.observe(150, {"psnr": 29.5, "swd": 30.0, "sharpness": 1.30})  # |log| 0.262
    guard.observe(200, {"psnr": 29.5, "swd": 40.0, "sharpness": 0.80})  # |log| 0.223: closest to 1
    assert guard.select()["step"] == 200
    by_psnr = _guard(select="psnr")
    by_psnr.observe(150, {"psnr": 29.9, "swd": 1.0})
    assert by_psnr.select()["step"] == 100  # stage 2 never raises PSNR: the reference wins


def test_stage_one_only_selects_the_highest_psnr_and_ties_go_later():
    guard = Guard(GuardSection())
    for step, value in ((10, 20.0), (20, 22.0), (30, 22.0), (40, 21.0)):
        guard.record(step, 1, {"psnr": value})
    choice = guard.select()
    assert choice["step"] == 30 and choice["metric"] == "psnr" and "no stage-2 reference" in choice["reason"]
    assert Guard(GuardSection()).select() is None


def test_candidates_without_the_metric_fall_back_to_psnr():
    guard = Guard(GuardSection())
    guard.set_reference(100, {"psnr": 30.0})
    guard.observe(150, {"psnr": 29.8})
    choice = guard.select()
    assert choice["step"] == 100 and choice["metric"] == "psnr" and "no candidate has swd" in choice["reason"]


def test_state_round_trips():
    guard = _guard()
    guard.observe(150, {"psnr": 28.0, "swd": 1.0})
    again = Guard(GuardSection())
    again.load_state_dict(guard.state_dict())
    assert again.state == guard.state and again.select() == guard.select()
