import os

import pytest
import torch

from vitok.train import checkpoint as ckpt


def test_save_load_round_trip(tmp_path):
    state = {"step": 3, "model": {"w": torch.arange(6.0)}, "rng": torch.get_rng_state()}
    path = ckpt.save_checkpoint(tmp_path, 3, state, export=lambda f: (f.mkdir(), (f / "x").write_text("m")))
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert (path / "model" / "x").read_text() == "m"
    assert ckpt.latest_checkpoint(tmp_path) == path


def test_failed_save_leaves_the_previous_checkpoint_and_no_debris(tmp_path):
    good = ckpt.save_checkpoint(tmp_path, 1, {"step": 1})

    def crash(folder):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint(tmp_path, 2, {"step": 2}, export=crash)
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]


def test_half_written_folder_is_ignored(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    (tmp_path / ".tmp-step_00000002-123").mkdir()  # what a SIGKILL mid-save leaves behind
    (tmp_path / "step_00000003").mkdir()  # no state.pt: not a checkpoint
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000001"


def test_resave_same_step_replaces(tmp_path):
    ckpt.save_checkpoint(tmp_path, 5, {"v": 1})
    ckpt.save_checkpoint(tmp_path, 5, {"v": 2})
    assert ckpt.load_checkpoint(tmp_path / "step_00000005")["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000005"]


def test_keep_last_plus_best(tmp_path):
    scores = {1: 20.0, 2: 25.0, 3: 22.0, 4: 21.0, 5: 23.0, 6: 24.0}
    for step in range(1, 7):
        ckpt.save_checkpoint(tmp_path, step, {"step": step})
        best = max((s for s in scores if s <= step), key=scores.get)
        ckpt.write_best(tmp_path, {"step": best, "metric": "psnr", "value": scores[best]})
        ckpt.prune(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 5, 6]
    assert ckpt.read_best(tmp_path) == {"step": 2, "metric": "psnr", "value": 25.0}


def test_corrupt_state_is_a_clear_error(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    with open(path / "state.pt", "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match="cannot be read"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ValueError, match="no state.pt"):
        ckpt.load_checkpoint(tmp_path)


def test_no_pickled_objects_are_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "step_00000001"
    path.mkdir()
    torch.save({"x": Evil()}, path / "state.pt")
    with pytest.raises(ValueError, match="cannot be read"):
        ckpt.load_checkpoint(path)


def test_a_kill_between_the_two_renames_of_a_resave_loses_nothing(tmp_path):
    ckpt.save_checkpoint(tmp_path, 5, {"v": 1})
    # The state a SIGKILL leaves after the old folder was moved aside and before the new one arrived.
    os.replace(tmp_path / "step_00000005", tmp_path / ".old-step_00000005-4242")
    (tmp_path / ".tmp-step_00000005-4242").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) is None  # reading never touches the folder
    assert (tmp_path / ".tmp-step_00000005-4242").is_dir()
    ckpt.recover(tmp_path)  # what a resume does first
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000005"
    assert ckpt.load_checkpoint(tmp_path / "step_00000005")["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000005"]
