"""build_transform: FS-style transform lists on uint8 FEMNIST tensors."""
import pytest
import torch

from federatedscope.core.data.transforms import build_transform

FS_NORM = [["ToTensor"], ["Normalize", {"mean": [0.9637], "std": [0.1592]}]]


def _batch(n=4):
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0))


def test_empty_is_to_tensor():
    x = _batch()
    for cfg in ([], None, [["ToTensor"]], ["ToTensor"]):
        out = build_transform(cfg)(x)
        assert out.dtype == torch.float32 and out.shape == (4, 1, 28, 28)
        assert torch.equal(out[:, 0], x.float() / 255)
    one = build_transform([])(x[0])
    assert one.shape == (1, 28, 28) and torch.equal(one[0], x[0].float() / 255)
    assert build_transform([])(torch.tensor([[255]], dtype=torch.uint8)).item() == 1.0


def test_normalize_math():
    x = _batch()
    out = build_transform(FS_NORM)(x)
    ref = (x.float() / 255 - 0.9637) / 0.1592
    assert out.shape == (4, 1, 28, 28)
    assert torch.allclose(out[:, 0], ref, atol=1e-6)
    white = build_transform(FS_NORM)(torch.full((28, 28), 255, dtype=torch.uint8))
    assert white.shape == (1, 28, 28)
    assert torch.allclose(white, torch.full_like(white, (1 - 0.9637) / 0.1592))


def test_tuples_and_implied_to_tensor():
    x = _batch(2)
    a = build_transform((("ToTensor",), ("Normalize", {"mean": 0.5, "std": 0.25})))(x)
    b = build_transform([["Normalize", {"mean": [0.5], "std": [0.25]}]])(x)  # ToTensor implied
    assert torch.equal(a, b)
    assert torch.allclose(a, (x.float().unsqueeze(1) / 255 - 0.5) / 0.25)


def test_errors_name_the_entry():
    with pytest.raises(ValueError, match="RandomCrop"):
        build_transform([["ToTensor"], ["RandomCrop", {"size": 24}]])
    with pytest.raises(ValueError, match="entry 1"):
        build_transform([["Normalize", {"mean": [0.5], "std": [0.5]}], ["ToTensor"]])
    with pytest.raises(ValueError, match="Normalize"):
        build_transform([["Normalize", {"mean": [0.5]}]])  # std missing
    with pytest.raises(ValueError, match="Normalize"):
        build_transform([["Normalize", {"mean": [0.5], "std": [0.0]}]])
    with pytest.raises(ValueError):
        build_transform([["ToTensor", "oops"]])
    with pytest.raises(ValueError, match="channel"):
        build_transform([["Normalize", {"mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}]])(_batch())


def test_to_tensor_rejects_float_input():
    with pytest.raises(TypeError):
        build_transform([])(torch.rand(2, 28, 28))
