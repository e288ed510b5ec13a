"""A tiny DiT learns two classes of 4×4×4 latents on a CPU and samples each class on request."""

import pytest
import torch

from vitok.generate import DiT, DiTConfig, GaussianDiffusion

GRID, C, BATCH = (4, 4), 4, 32


def train_tiny_dit(prediction: str, steps: int, means: torch.Tensor) -> tuple[DiT, GaussianDiffusion, float]:
    """The DiT recipe in miniature: label dropout for guidance, uniform t, MSE on the target."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(in_channels=C, num_classes=2, width=64, depth=2, heads=4, prediction=prediction))
    diffusion = GaussianDiffusion("linear", 1000, prediction=prediction)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        y = torch.randint(0, 2, (BATCH,), generator=g)
        x0 = means[y] + 0.2 * torch.randn(BATCH, 16, C, generator=g)
        t = torch.randint(0, 1000, (BATCH,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        out = model(diffusion.q_sample(x0, t, noise), t, model.drop_labels(y, generator=g), GRID)
        loss = diffusion.training_loss(out, x0, t, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), diffusion, loss.item()


# eps-prediction needs more steps than v here: its x0 estimate at high noise divides by sqrt(alpha_bar).
@pytest.mark.parametrize("prediction,steps,max_rms", [("eps", 400, None), ("v", 300, 0.4)])
def test_tiny_dit_samples_the_requested_class(prediction, steps, max_rms):
    means = torch.randn(2, 16, C, generator=torch.Generator().manual_seed(0))  # two class patterns, 2×L×c
    model, diffusion, loss = train_tiny_dit(prediction, steps, means)
    labels = torch.arange(64) % 2
    samples = diffusion.sample(lambda x, t, y, s: model.forward_with_cfg(x, t, y, s, GRID), (64, 16, C),
                               steps=50, cfg_scale=1.5, labels=labels, generator=torch.Generator().manual_seed(2))
    dist = (samples[:, None] - means[None]).pow(2).mean((2, 3))  # B×2 mean squared distance to each class
    accuracy = float((dist.argmin(1) == labels).float().mean())
    rms = float(dist.gather(1, labels[:, None]).sqrt().mean())
    print(f"{prediction}: final loss {loss:.3f}, nearest-class-mean accuracy {accuracy:.2f}, "
          f"rms distance to own class mean {rms:.3f} (data: 0.2)")
    assert accuracy > 0.9
    if max_rms is not None:
        assert rms < max_rms
