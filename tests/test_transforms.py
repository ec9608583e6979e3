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


# ------------------------------------------------------------------ each rule, by its text
def _err(exc, fn, *args):
    with pytest.raises(exc) as ei:
        fn(*args)
    return str(ei.value)


def test_to_tensor_checks_rank_and_dtype_with_the_expected_shape_named():
    from federatedscope.core.data.transforms import ToTensor
    for bad in (1, 4):
        assert _err(ValueError, ToTensor, bad) == \
            f"ToTensor works on [H, W] or [C, H, W] samples, not {bad}-d"
    assert ToTensor(3).sample_dims == 3 and ToTensor().sample_dims == 2
    assert _err(TypeError, ToTensor(), torch.zeros(2, 2)) == \
        "ToTensor expects a uint8 tensor, got torch.float32"
    assert _err(TypeError, ToTensor(), [[1]]) == "ToTensor expects a uint8 tensor, got list"
    u8 = torch.zeros((2, 1, 4, 4), dtype=torch.uint8)
    assert _err(ValueError, ToTensor(2), u8) == \
        "ToTensor expects [H, W] or [n, H, W], got shape (2, 1, 4, 4)"
    assert _err(ValueError, ToTensor(3), u8[0, 0]) == \
        "ToTensor expects [C, H, W] or [n, C, H, W], got shape (4, 4)"
    assert _err(ValueError, ToTensor(2), u8[0, 0, 0]) == \
        "ToTensor expects [H, W] or [n, H, W], got shape (4,)"
    assert ToTensor(3)(u8).shape == (2, 1, 4, 4) and ToTensor(3)(u8[0]).shape == (1, 4, 4)
    x = torch.tensor([[0, 51], [102, 255]], dtype=torch.uint8)
    got = ToTensor()(x)
    assert got.shape == (1, 2, 2) and got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([[[0.0, 0.2], [0.4, 1.0]]], dtype=torch.float32))
    assert repr(ToTensor()) == "ToTensor()"


def test_normalize_checks_and_per_channel_math():
    from federatedscope.core.data.transforms import Normalize
    assert _err(ValueError, Normalize, [], [1.0]) == "Normalize needs non-empty mean and std"
    assert _err(ValueError, Normalize, [0.5], []) == "Normalize needs non-empty mean and std"
    assert _err(ValueError, Normalize, [0.5, 0.5], [0.5, -0.1]) == \
        "Normalize std must be > 0, got [0.5, -0.10000000149011612]"
    n = Normalize([[0.5], [0.25]], (2, 4), inplace=True)     # nested: flattened; inplace ignored
    assert n.mean.tolist() == [0.5, 0.25] and n.std.tolist() == [2.0, 4.0]
    assert repr(n) == "Normalize(mean=[0.5, 0.25], std=[2.0, 4.0])"
    x = torch.tensor([[[1.0]], [[0.25]]])                     # [C=2, 1, 1]
    out = n(x)
    assert out.tolist() == [[[0.25]], [[0.0]]] and torch.equal(x, torch.tensor([[[1.0]], [[0.25]]]))
    batch = torch.stack([x, 2 * x])                           # [n=2, 2, 1, 1]
    assert n(batch)[:, :, 0, 0].tolist() == [[0.25, 0.0], [0.75, 0.0625]]
    assert n(x.double()).dtype == torch.float64
    assert _err(ValueError, n, torch.zeros(2, 3, dtype=torch.float32)) == \
        "Normalize expects float [C, H, W] or [n, C, H, W] (apply ToTensor first), got " \
        "torch.float32 (2, 3)"
    assert _err(ValueError, n, torch.zeros(2, 1, 1, dtype=torch.uint8)).startswith(
        "Normalize expects float")
    assert _err(ValueError, n, torch.zeros(3, 1, 1)) == \
        "Normalize mean has 2 values for 3 channel(s)"
    assert _err(ValueError, Normalize(0.0, [1.0, 2.0]), torch.zeros(3, 1, 1)) == \
        "Normalize std has 2 values for 3 channel(s)"
    assert Normalize(1.0, 2.0)(torch.ones(3, 1, 1)).tolist() == [[[0.0]]] * 3
    import numpy as np
    wide = Normalize(np.array([0.1]), np.array([3]))         # float64 / int64 in: float32 kept
    assert wide.mean.dtype == wide.std.dtype == torch.float32
    assert repr(Normalize(1, 2)) == "Normalize(mean=[1.0], std=[2.0])"
    half = Normalize([0.5], [0.25])(torch.ones(1, 2, 2, dtype=torch.float16))
    assert half.dtype == torch.float16 and half.tolist() == [[[2.0, 2.0], [2.0, 2.0]]]


def test_build_transform_entries_and_their_errors():
    from federatedscope.core.data.transforms import Compose, build_transform, identity
    assert repr(build_transform([["Normalize", {"mean": 0.5, "std": 0.25}]])) == \
        "Compose(ToTensor(), Normalize(mean=[0.5], std=[0.25]))"
    assert repr(build_transform(None)) == "Compose(ToTensor())"
    assert build_transform(("ToTensor",)).transforms[0].sample_dims == 2
    assert build_transform([], sample_dims=3).transforms[0].sample_dims == 3
    assert build_transform([["ToTensor"]], 3).transforms[0].sample_dims == 3
    user = {"sample_dims": 3}
    cfg = [["ToTensor", user]]
    assert build_transform(cfg, 2).transforms[0].sample_dims == 3   # the user's value wins
    plain = {}
    build_transform([("ToTensor", plain)], 3)
    assert plain == {}                                   # the config's dict is never written
    for bad in ([], [1], ["ToTensor", "x"], ["ToTensor", {}, {}], 7, ("Normalize", [0.5])):
        assert _err(ValueError, build_transform, [bad]) == (
            f"data.transform entry {bad!r} must look like ['Name'] or ['Name', {{kwargs}}]")
    assert _err(ValueError, build_transform, [["ToTensor"], ["Blur", {"k": 3}]]) == (
        "unknown transform 'Blur' in data.transform entry 1 (['Blur', {'k': 3}]); "
        "supported: Normalize, ToTensor")
    assert _err(ValueError, build_transform, [["ToTensor"], ["ToTensor"]]) == \
        "data.transform entry 1 (['ToTensor']): ToTensor must be the first transform"
    assert _err(ValueError, build_transform, [["Normalize", {"mean": 1, "std": 1}], "ToTensor"]) \
        == "data.transform entry 1 ('ToTensor'): ToTensor must be the first transform"
    assert _err(ValueError, build_transform, [["ToTensor", {"sample_dims": 5}]]) == (
        "bad arguments in data.transform entry 0 (['ToTensor', {'sample_dims': 5}]): "
        "ToTensor works on [H, W] or [C, H, W] samples, not 5-d")
    assert _err(ValueError, build_transform, [["Normalize", {"mean": 1}]]).startswith(
        "bad arguments in data.transform entry 0 (['Normalize', {'mean': 1}]): ")
    assert isinstance(build_transform([]), Compose) and identity(cfg) is cfg


def test_transform_for_uses_the_specs_rank_and_default():
    from federatedscope.core.data.dataset_spec import get_spec
    from federatedscope.core.data.transforms import identity, transform_for
    shakes = get_spec("shakespeare")
    assert transform_for(None, shakes) is identity and transform_for((), shakes) is identity
    assert _err(ValueError, transform_for, [["ToTensor"]], shakes) == (
        f"data.transform=[['ToTensor']]: shakespeare samples are {shakes.sample_type} token ids, "
        f"which take no transform; remove data.transform")
    cifar = transform_for([], get_spec("cifar10"))
    assert cifar.transforms[0].sample_dims == 3 and len(cifar.transforms) == 2
    own = transform_for([["Normalize", {"mean": 0.5, "std": 0.5}]], get_spec("cifar10"))
    assert repr(own) == "Compose(ToTensor(), Normalize(mean=[0.5], std=[0.5]))"
    assert own.transforms[0].sample_dims == 3
    assert transform_for(None, get_spec("femnist")).transforms[0].sample_dims == 2


# ------------------------------------------------------------------ per-split transforms
OWN = [["ToTensor"], ["Normalize", {"mean": [0.5], "std": [0.25]}]]


def test_val_and_test_transforms_replace_data_transform_for_their_split_only():
    """FS's data.val_transform / data.test_transform: a split's own list when given, else
    data.transform (FS: "if not provided, use cfg.data.transform for all splits")."""
    from types import SimpleNamespace as NS
    from federatedscope.core.data.dataset_spec import get_spec
    from federatedscope.core.data.transforms import split_transforms
    x = _batch()
    fs_norm = (x.float() / 255 - 0.9637) / 0.1592
    t = split_transforms(NS(transform=FS_NORM, val_transform=[], test_transform=OWN),
                         get_spec("femnist"))
    assert t["train"] is t["val"]
    assert torch.allclose(t["val"](x)[:, 0], fs_norm, atol=1e-5)
    assert torch.allclose(t["test"](x)[:, 0], (x.float() / 255 - 0.5) / 0.25, atol=1e-5)
    t = split_transforms(NS(transform=[], val_transform=OWN, test_transform=[]),
                         get_spec("femnist"))
    assert torch.equal(t["test"](x)[:, 0], x.float() / 255)                 # FEMNIST default
    assert torch.allclose(t["val"](x)[:, 0], (x.float() / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(ValueError, match=r"^data\.test_transform=\[\['Resize'\]\]: unknown "
                                         r"transform 'Resize'"):
        split_transforms(NS(transform=[], val_transform=[], test_transform=[["Resize"]]),
                         get_spec("femnist"))


def _first_batch(split):
    return next(iter(split.iter_batches(8, False, 0)))[0]


def test_shard_and_fs_paths_give_each_split_its_own_transform(femnist_root, femnist_shards):
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.configs.config import finalize, load_cfg
    common = ["data.transform", repr(FS_NORM), "data.test_transform", repr(OWN),
              "data.root", femnist_root, "data.subsample", "1.0"]
    shard = finalize(load_cfg(None, common + ["distributed_data.enabled", "True",
                                              "distributed_data.manifest", femnist_shards]))
    fs_path = finalize(load_cfg(None, common + ["federate.client_num", "4"]))
    for cfg in (shard, fs_path):
        data, _ = get_data(cfg)
        for cid in sorted(data):
            splits = data[cid]
            raw = {s: splits[s] for s in ("train", "val", "test")}
            plain = {s: _first_batch(type(v)(v.x, v.y, lambda t: t)) if hasattr(v, "x") else None
                     for s, v in raw.items()}
            assert torch.allclose(_first_batch(raw["train"])[:, 0],
                                  (plain["train"].float() / 255 - 0.9637) / 0.1592, atol=1e-5)
            assert torch.allclose(_first_batch(raw["val"])[:, 0],
                                  (plain["val"].float() / 255 - 0.9637) / 0.1592, atol=1e-5)
            assert torch.allclose(_first_batch(raw["test"])[:, 0],
                                  (plain["test"].float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_fs_cifar10_baselines_split_transform_keys_load():
    """The keys of FS's fedavg_convnet2_on_cifar10.yaml that stopped it ('Non-existent config key:
    data.test_transform'); its merge_test_data and data.args stay refused by name."""
    from federatedscope.core.configs.config import finalize, load_cfg
    norm = "[['ToTensor'], ['Normalize', {'mean': [0.4914, 0.4822, 0.4465], 'std': [0.247, " \
           "0.243, 0.261]}]]"
    cfg = finalize(load_cfg(None, ["data.type", "CIFAR10@torchvision", "data.transform", norm,
                                   "data.test_transform", norm, "data.val_transform", norm]))
    assert cfg.data.test_transform[1][1]["std"] == [0.247, 0.243, 0.261]


def test_a_bad_split_list_is_named_by_its_own_key_and_a_bad_common_list_by_data_transform():
    """The error names the key the operator wrote: data.val_transform for val's own list, plain
    data.transform's message when the bad list is the common one (the train split's, and val's
    and test's when their own lists are empty)."""
    from types import SimpleNamespace as NS
    from federatedscope.core.data.dataset_spec import get_spec
    from federatedscope.core.data.transforms import split_transforms
    femnist = get_spec("femnist")
    bad_val = [["ToTensor"], ["Normalize", {"mean": [0.5], "std": [0.0]}]]
    assert _err(ValueError, split_transforms,
                NS(transform=FS_NORM, val_transform=bad_val, test_transform=OWN), femnist) == (
        f"data.val_transform={bad_val!r}: bad arguments in data.transform entry 1 "
        f"({bad_val[1]!r}): Normalize std must be > 0, got [0.0]")
    # a bad common list: built for train first, named as data.transform's own entry
    assert _err(ValueError, split_transforms,
                NS(transform=[["Resize"]], val_transform=None, test_transform=None), femnist) == (
        "unknown transform 'Resize' in data.transform entry 0 (['Resize']); supported: "
        "Normalize, ToTensor")
    # the same bad list given as data.transform and as val's own: train reaches it first
    assert _err(ValueError, split_transforms,
                NS(transform=bad_val, val_transform=bad_val, test_transform=[]),
                femnist).startswith("bad arguments in data.transform entry 1")


def test_a_token_dataset_refuses_a_val_transform_naming_that_key_as_the_fix():
    from types import SimpleNamespace as NS
    from federatedscope.core.data.dataset_spec import get_spec
    from federatedscope.core.data.transforms import split_transforms
    text = _err(ValueError, split_transforms,
                NS(transform=[], val_transform=[["ToTensor"]], test_transform=[]),
                get_spec("shakespeare"))
    assert text.startswith("data.val_transform=[['ToTensor']]: ")
    assert text.endswith("remove data.val_transform"), text
    # the whole text, named once: transform_for already put the key first, so split_transforms
    # must not prefix it a second time
    shakes = get_spec("shakespeare")
    assert text == (f"data.val_transform=[['ToTensor']]: shakespeare samples are "
                    f"{shakes.sample_type} token ids, which take no transform; "
                    f"remove data.val_transform")
    # the common list (train's, and val's and test's without their own) is data.transform's
    text = _err(ValueError, split_transforms,
                NS(transform=[["ToTensor"]], val_transform=[], test_transform=None), shakes)
    assert text == (f"data.transform=[['ToTensor']]: shakespeare samples are "
                    f"{shakes.sample_type} token ids, which take no transform; "
                    f"remove data.transform")
