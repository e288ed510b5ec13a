"""The generation sweep's weight-free metrics: the pixel classifier, unpaired patch SWD, generation_swd."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitok.generate.fidelity import (ClassifierConfig, accuracy, generation_swd, load_classifier, load_labelled,
                                     predict, to_input, train_classifier_on_folders)
from vitok.metrics import PatchSWD
from vitok.metrics.swd import image_keys, set_swd
from vitok.sweep.generation import BUNDLED_CLASSES, bundled_crop_set

SMALL = ClassifierConfig(size=32, width=8, steps=80, batch_size=16)


@pytest.fixture(scope="module")
def crop_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    bundled_crop_set(root)
    return root


@pytest.fixture(scope="module")
def trained(crop_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier")
    return out, train_classifier_on_folders(crop_set / "train", crop_set / "val", out, SMALL, log=lambda line: None)


# --- the classifier ------------------------------------------------------------------------------

def test_classifier_learns_the_bundled_classes(crop_set, trained):
    out, info = trained
    assert info["classes"] == list(BUNDLED_CLASSES)
    assert (info["train_images"], info["val_images"]) == (4 * 16, 4 * 6)
    # Four classes: chance is 0.25; crops of four distinct photos are easy once it has learned anything.
    assert info["val_accuracy"] >= 0.75 and info["train_accuracy"] >= 0.75, info
    model, saved = load_classifier(out)
    assert saved == json.loads((out / "classifier.json").read_text()) == info
    images, labels, classes, _ = load_labelled(crop_set / "val", 2 * SMALL.size)
    assert classes == list(BUNDLED_CLASSES)
    # The recorded ceiling is what the saved model scores on the held-out images.
    assert accuracy(model, images, labels) == pytest.approx(info["val_accuracy"])
    per_class = {c: float((predict(model, images[labels == i]) == i).float().mean()) for i, c in enumerate(classes)}
    assert per_class == pytest.approx(info["val_accuracy_per_class"])


def test_classifier_is_deterministic_and_reloaded_not_retrained(crop_set, trained, tmp_path):
    out, info = trained
    weights = load_file(str(out / "model.safetensors"))
    again = train_classifier_on_folders(crop_set / "train", crop_set / "val", tmp_path / "b", SMALL,
                                        log=lambda line: None)
    for key, value in load_file(str(tmp_path / "b" / "model.safetensors")).items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    assert again["val_accuracy"] == info["val_accuracy"]
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    lines = []
    reloaded = train_classifier_on_folders(crop_set / "train", crop_set / "val", out, SMALL, log=lines.append)
    assert reloaded == info and not lines and (out / "model.safetensors").stat().st_mtime_ns == stamp
    # Another configuration trains anew into the same folder.
    other = ClassifierConfig(size=32, width=8, steps=4, batch_size=16, seed=1)
    retrained = train_classifier_on_folders(crop_set / "train", crop_set / "val", tmp_path / "b", other,
                                            log=lines.append)
    assert retrained["config"]["steps"] == 4 and lines


def test_classifier_refusals_and_unreadable_files(crop_set, tmp_path):
    one = tmp_path / "one" / "only"
    one.mkdir(parents=True)
    for k, path in enumerate(sorted((crop_set / "train" / "rocket").glob("*.png"))[:3]):
        (one / f"{k}.png").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match="at least 2"):
        train_classifier_on_folders(tmp_path / "one", crop_set / "val", tmp_path / "c1", SMALL)
    extra = tmp_path / "val_extra"
    for name in ("rocket", "zebra"):
        (extra / name).mkdir(parents=True)
        (extra / name / "0.png").write_bytes((crop_set / "val" / "rocket" / "000.png").read_bytes())
    with pytest.raises(ValueError, match="zebra"):
        train_classifier_on_folders(crop_set / "train", extra, tmp_path / "c2", SMALL)
    with pytest.raises(ValueError, match="no pixel classifier"):
        load_classifier(tmp_path)
    for bad, match in ((dict(size=8), "size"), (dict(steps=0), "steps"), (dict(lr=-1.0), "lr"),
                       (dict(min_scale=0.0), "min_scale")):
        with pytest.raises(ValueError, match=match):
            ClassifierConfig(**bad)
    # An unreadable file is skipped and counted, not fatal.
    train = tmp_path / "train"
    for name in ("chelsea", "rocket"):
        (train / name).mkdir(parents=True)
        for k, path in enumerate(sorted((crop_set / "train" / name).glob("*.png"))[:4]):
            (train / name / f"{k}.png").write_bytes(path.read_bytes())
    (train / "rocket" / "broken.png").write_bytes(b"not a png")
    val = tmp_path / "val"
    for name in ("chelsea", "rocket"):
        (val / name).mkdir(parents=True)
        (val / name / "0.png").write_bytes((crop_set / "val" / name / "000.png").read_bytes())
    info = train_classifier_on_folders(train, val, tmp_path / "c3", ClassifierConfig(size=16, width=4, steps=2),
                                       log=lambda line: None)
    assert info["skipped_unreadable"] == {"train": 1, "val": 0} and info["train_images"] == 8


def test_to_input_resizes_shorter_side_and_centre_crops():
    image = torch.zeros(1, 3, 40, 80, dtype=torch.uint8)
    image[..., 14:66] = 255  # a bright band a little wider than the centre square; dark sides cropped away
    x = to_input(image, 20)
    assert x.shape == (1, 3, 20, 20)
    assert x.min().item() == pytest.approx(1.0) and x.max().item() == pytest.approx(1.0)
    assert to_input(image[..., :40], 20).min().item() == pytest.approx(-1.0)  # square: resized only


# --- unpaired patch SWD --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(crop_set):
    images, labels, _, _ = load_labelled(crop_set / "val", 64)
    return images, labels


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(images.double().numpy(), sigma=(0, 0, sigma, sigma), mode="reflect")
    return torch.from_numpy(np.clip(np.round(out), 0, 255).astype(np.uint8))


def test_set_swd_is_patch_swd_when_both_sets_share_keys(photos):
    """With the same keys on both sides the unpaired protocol samples the paired one's patches."""
    real, _ = photos
    fake = _blur(real, 1.0)
    keys = [f"k{i}" for i in range(len(real))]
    acc = PatchSWD(directions=128)
    acc.update(keys, real.float() / 127.5 - 1, fake.float() / 127.5 - 1)
    paired = acc.compute()
    unpaired = set_swd(real, fake, keys, keys, directions=128)
    assert unpaired["levels"] == pytest.approx(paired["levels"], rel=1e-6)
    assert unpaired["swd"] == pytest.approx(paired["swd"], rel=1e-6)


def test_set_swd_zero_order_free_and_monotone(photos):
    real, _ = photos
    assert set_swd(real, real.clone())["swd"] == 0.0
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))
    fake = _blur(real, 1.0)
    assert set_swd(real, fake[perm])["swd"] == set_swd(real, fake)["swd"] == set_swd(real[perm], fake)["swd"]
    blurred = [set_swd(real, _blur(real, s))["swd"] for s in (0.5, 1.0, 2.0)]
    assert 0 < blurred[0] < blurred[1] < blurred[2], blurred
    g = torch.Generator().manual_seed(3)
    noisy = [set_swd(real, (real.float() + s * torch.randn(real.shape, generator=g)).round().clamp(0, 255)
                     .to(torch.uint8))["swd"] for s in (4.0, 12.0, 36.0)]
    assert 0 < noisy[0] < noisy[1] < noisy[2], noisy
    # Unpaired: sets of different sizes compare on the smaller one's patch count.
    result = set_swd(real, fake[:5])
    assert result["patches"]["64"] == 5 * 128
    assert image_keys(real[:2]) == image_keys(real[:2].clone()) and len(set(image_keys(real))) == len(real)
    with pytest.raises(ValueError, match="uint8"):
        set_swd(real.float(), fake)
    with pytest.raises(ValueError, match="one image size"):
        set_swd(real, fake[..., :48, :48])


def test_generation_swd_pools_and_splits_by_class(photos):
    real, labels = photos
    fake = _blur(real, 1.5)
    result = generation_swd(fake, labels, real, labels, directions=64)
    assert result["swd"] == pytest.approx(set_swd(real, fake, directions=64)["swd"])
    for c in range(4):
        mine = labels == c
        assert result["per_class"][c] == pytest.approx(set_swd(real[mine], fake[mine], directions=64)["swd"])
    assert result["swd_class"] == pytest.approx(np.mean(list(result["per_class"].values())))
    # Only the generated classes' real images are the reference; a class with one sample has no own SWD.
    keep = (labels == 0) | (labels == 1)
    keep[torch.nonzero(labels == 1)[1:, 0]] = False
    partial = generation_swd(fake[keep], labels[keep], real, labels, directions=64)
    ref_real = real[(labels == 0) | (labels == 1)]
    assert partial["swd"] == pytest.approx(set_swd(ref_real, fake[keep], directions=64)["swd"])
    assert list(partial["per_class"]) == [0] and 1 in partial["skipped_classes"]
    # Real images of another size are brought to the samples' size first.
    small = generation_swd(fake[:, :, ::2, ::2].contiguous(), labels, real, labels, directions=64)
    assert small["levels"].keys() == {"32", "16"}
    with pytest.raises(ValueError, match="no real image"):
        generation_swd(fake, labels, real, labels + 10)
