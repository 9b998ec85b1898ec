from pathlib import Path

import pytest

# Real datasets live beside the checkout, never inside it (see ../shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a message when absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (only present in the developers' workspace)")
    return path


@pytest.fixture(autouse=True)
def _reset_keras_policy():
    yield
    import keras

    keras.mixed_precision.set_dtype_policy("float32")
