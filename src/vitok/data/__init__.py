"""Data helpers: bundled photos, robust image loading, tensor conversion and cropping."""

from .images import (
    bundled_photos,
    center_crop_to_multiple,
    from_tensor,
    load_image,
    resize_center_crop,
    to_tensor,
)

__all__ = [
    "bundled_photos",
    "center_crop_to_multiple",
    "from_tensor",
    "load_image",
    "resize_center_crop",
    "to_tensor",
]
