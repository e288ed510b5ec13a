"""One-off: downsize scikit-image's bundled photographs into src/vitok/assets/photos/.

The colour photographs, plus the freely licensed greyscale photographs (stored as RGB), so the
demo has enough different scenes and textures to learn from.
"""

from __future__ import annotations

import os
from pathlib import Path

import skimage
from PIL import Image

SHORT_SIDE = 256
# Source file in skimage/data -> bundled name. Licences are recorded in LICENSES.md.
SOURCES = {
    "astronaut.png": "astronaut",
    "chelsea.png": "chelsea",
    "coffee.png": "coffee",
    "rocket.jpg": "rocket",
    "hubble_deep_field.jpg": "hubble_deep_field",
    "ihc.png": "ihc",
    "retina.jpg": "retina",
    "camera.png": "camera",
    "coins.png": "coins",
    "brick.png": "brick",
    "grass.png": "grass",
    "gravel.png": "gravel",
    "clock_motion.png": "clock",
}


def main() -> None:
    """Resize each photo so its shorter side is SHORT_SIDE px and save as JPEG q95."""
    src_dir = Path(os.path.dirname(skimage.__file__)) / "data"
    out_dir = Path(__file__).resolve().parents[1] / "src" / "vitok" / "assets" / "photos"
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for fname, name in SOURCES.items():
        with Image.open(src_dir / fname) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = SHORT_SIDE / min(w, h)
            # Round the long side but pin the short side exactly, so it is 256 regardless of float error.
            size = (SHORT_SIDE, round(h * scale)) if w <= h else (round(w * scale), SHORT_SIDE)
            small = im.resize(size, Image.Resampling.LANCZOS)
        out = out_dir / f"{name}.jpg"
        small.save(out, format="JPEG", quality=95)
        total += out.stat().st_size
        print(f"{out.name}: {w}x{h} -> {size[0]}x{size[1]}, {out.stat().st_size / 1024:.1f} KB")
    print(f"total {total / 1024:.1f} KB")


if __name__ == "__main__":
    main()
