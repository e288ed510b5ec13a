"""The feature networks behind rFID/rIS, LPIPS and rFVD, loaded from verified local weight files."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..metrics.weights import WeightsUnavailable, check_file, load_state_dict, locate


@dataclass
class FeatureNetworks:
    """Whatever could be loaded; `missing` maps each metric left out to the reason."""

    inception: nn.Module | None = None
    lpips: nn.Module | None = None
    i3d: nn.Module | None = None
    # False only in plumbing tests with random weights: such numbers never get a metric's name.
    published_weights: bool = True
    missing: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "FeatureNetworks":
        for name in ("inception", "lpips", "i3d"):
            net = getattr(self, name)
            if net is not None:
                setattr(self, name, net.to(device))
        return self


def _provenance(keys: tuple[str, ...], folder) -> str:
    parts = []
    for key in keys:
        state, detail = check_file(key, folder)
        parts.append(f"{key}: {state} {detail}")
    return "; ".join(parts)


def load_networks(folder: str | None, video: bool, wanted: set[str]) -> FeatureNetworks:
    """Load the networks the wanted metrics need; a missing or wrong file becomes a reason, not an error."""
    nets = FeatureNetworks()
    if not video and wanted & {"rfid", "ris"}:
        try:
            from ..metrics.inception import build_fid_inception

            nets.inception = build_fid_inception(load_state_dict("inception", folder, needed_for="rFID and rIS"))
            nets.provenance["inception"] = _provenance(("inception",), folder)
        except WeightsUnavailable as err:
            for name in wanted & {"rfid", "ris"}:
                nets.missing[name] = str(err)
    if not video and "lpips" in wanted:
        try:
            from ..metrics.lpips import build_lpips

            vgg = load_state_dict("vgg16", folder, needed_for="LPIPS")
            heads = load_state_dict("lpips_vgg", folder, needed_for="LPIPS")
            nets.lpips = build_lpips(vgg, heads)
            nets.provenance["lpips"] = _provenance(("vgg16", "lpips_vgg"), folder)
        except WeightsUnavailable as err:
            nets.missing["lpips"] = str(err)
    if video and "rfvd" in wanted:
        try:
            from ..metrics.i3d import load_i3d

            nets.i3d = load_i3d(locate("i3d", folder, needed_for="rFVD"))
            nets.provenance["i3d"] = _provenance(("i3d",), folder)
        except (WeightsUnavailable, ValueError) as err:
            nets.missing["rfvd"] = str(err)
    if video:
        for name in wanted & {"rfid", "ris", "lpips"}:
            nets.missing[name] = "image metric: not computed for video models"
    else:
        if "rfvd" in wanted:
            nets.missing["rfvd"] = "video metric: not computed for image models"
    return nets
