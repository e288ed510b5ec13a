"""`vitok eval` under torchrun with pickled random-weight feature networks (a plumbing check).

    torchrun ... torchrun_eval.py NETWORKS.pt RIS_SPLITS -- <vitok eval arguments>

NETWORKS.pt is a torch.save'd FeatureNetworks, so every rank uses exactly the same weights.
"""

import functools
import sys

import torch

import vitok.eval.run as run
from vitok.cli import main

if __name__ == "__main__":
    networks_file, ris_splits, *argv = sys.argv[1:]
    networks = torch.load(networks_file, weights_only=False)
    run.load_networks = lambda folder, video, wanted: networks
    run.evaluate_model = functools.partial(run.evaluate_model, ris_splits=int(ris_splits))
    sys.exit(main(argv[1:] if argv[:1] == ["--"] else argv))
