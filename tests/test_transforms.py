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


def test_colour_samples_keep_their_channels_and_normalize_per_channel():
    """uint8 [n, 3, H, W] (CelebA, CIFAR-10): ToTensor only scales; Normalize uses each
    channel's own mean/std (CIFAR-10's, by hand for one pixel)."""
    from federatedscope.core.data.dataset_spec import get_spec
    from federatedscope.core.data.transforms import transform_for
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    x[1, :, 0, 0] = torch.tensor([255, 0, 51], dtype=torch.uint8)
    out = transform_for([], get_spec("cifar10"))(x)  # empty: the spec's default (FS's baseline)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    want = [(1 - 0.4914) / 0.247, (0 - 0.4822) / 0.243, (0.2 - 0.4465) / 0.261]
    assert torch.allclose(out[1, :, 0, 0], torch.tensor(want), atol=1e-6)
    one = build_transform([], sample_dims=3)(x[1])
    assert one.shape == (3, 32, 32) and one[0, 0, 0].item() == 1.0
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        build_transform([], sample_dims=3)(x[0, 0])  # a grey [32, 32] is not a colour sample


def test_token_ids_get_no_transform_and_refuse_one():
    from federatedscope.core.data.dataset_spec import get_spec
    from federatedscope.core.data.transforms import transform_for
    ids = torch.randint(0, 80, (4, 80), dtype=torch.int64)
    assert transform_for([], get_spec("shakespeare"))(ids) is ids
    with pytest.raises(ValueError, match="data.transform"):
        transform_for([["ToTensor"]], get_spec("shakespeare"))


def test_femnist_unchanged_through_its_spec():
    from federatedscope.core.data.dataset_spec import get_spec
    from federatedscope.core.data.transforms import transform_for
    x = _batch()
    assert torch.equal(transform_for(FS_NORM, get_spec("femnist"))(x), build_transform(FS_NORM)(x))
    assert torch.equal(transform_for([], get_spec("femnist"))(x), build_transform([])(x))
