"""Every shipped model folder carries the same remote code as the root modules (a stale copy would load old code)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REMOTE_CODE = ("configuration_barcodemae.py", "modeling_barcodemae.py", "tokenization_barcodemae.py")
SHIPPED = sorted(path.parent for path in (ROOT / "pretrained").glob("*/config.json"))


def test_there_are_shipped_models():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda path: path.name)
def test_shipped_remote_code_is_the_root_modules(folder):
    for name in REMOTE_CODE:
        assert (folder / name).read_text() == (ROOT / name).read_text(), f"{folder.name}/{name} is stale"
