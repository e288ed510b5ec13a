"""A tiny tokenizer memorises one real photo: the whole model can represent and learn detail."""

import torch

from conftest import tiny_config
from vitok.data import bundled_photos, load_image, to_tensor
from vitok.metrics import psnr
from vitok.model import ViTok


def test_tiny_model_overfits_one_real_image():
    torch.manual_seed(0)
    photo = next(p for p in bundled_photos() if p.stem == "astronaut")
    x = to_tensor(load_image(photo)[48:112, 96:160]).unsqueeze(0)  # a 64×64 crop with face and suit
    model = ViTok(tiny_config(encoder_width=64, encoder_heads=4, encoder_depth=2, decoder_width=64,
                              decoder_heads=4, decoder_depth=2, patch_size=8, channels=16, image_size=64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        start = psnr(x, model(x, sample=False)[0]).item()
    for _ in range(700):
        x_hat, post = model(x, sample=False, check=False)
        loss = (x_hat - x).square().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = psnr(x, model(x, sample=False)[0]).item()
    assert start < 15
    assert end > 32, f"PSNR only reached {end:.2f} dB"
