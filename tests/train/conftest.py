import shutil

import pytest

from vitok.data.images import bundled_photos


@pytest.fixture
def photo_folder(tmp_path):
    """The bundled photos plus one zero-byte and one truncated file that training must skip."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in bundled_photos():
        shutil.copy(path, folder / path.name)
    (folder / "empty.jpg").write_bytes(b"")
    data = bundled_photos()[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return folder
