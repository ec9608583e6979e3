"""Tensor transforms built from FS's ``cfg.data.transform`` list.

FS configs spell transforms torchvision-style, e.g.
``[['ToTensor'], ['Normalize', {'mean': [0.9637], 'std': [0.1592]}]]``. Our samples are already
uint8 tensors (doc/architecture.md), so these work on batches of tensors directly instead of PIL
images: input uint8 ``[n, 28, 28]`` or ``[28, 28]``, output float32 ``[n, 1, 28, 28]`` or
``[1, 28, 28]``. Colour samples are stored channel-first (uint8 ``[3, H, W]``): ToTensor then
only scales (``[n, 3, H, W]`` stays 4-d). Token samples (int64 ids, Shakespeare) get no transform:
``transform_for`` decides from the dataset's sample dtype and shape.
"""
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]


class ToTensor:
    """uint8 -> float32 in [0, 1] with a channel dim, like torchvision's ToTensor on images.

    ``sample_dims`` is the rank of one stored sample: 2 (grey ``[H, W]``: a channel dim is
    added) or 3 (channel-first ``[C, H, W]``: already has one)."""

    def __init__(self, sample_dims: int = 2) -> None:
        if sample_dims not in (2, 3):
            raise ValueError(f"ToTensor works on [H, W] or [C, H, W] samples, not {sample_dims}-d")
        self.sample_dims = sample_dims

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
            # Refusing floats avoids a silent second /255 on already-scaled data.
            raise TypeError("ToTensor expects a uint8 tensor, got %s"
                            % (x.dtype if isinstance(x, torch.Tensor) else type(x).__name__))
        d = self.sample_dims
        if x.dim() not in (d, d + 1):
            raise ValueError("ToTensor expects %s, got shape %s"
                             % ("[H, W] or [n, H, W]" if d == 2 else "[C, H, W] or [n, C, H, W]",
                                tuple(x.shape)))
        scaled = x.to(torch.float32) / 255.0
        return scaled.unsqueeze(-3) if d == 2 else scaled

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """``(x - mean) / std`` per channel on float ``[C, H, W]`` or ``[n, C, H, W]``."""

    def __init__(self, mean: Any, std: Any, inplace: bool = False) -> None:
        del inplace  # accepted for torchvision compatibility; we never modify the input
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if m.numel() == 0 or s.numel() == 0:
            raise ValueError("Normalize needs non-empty mean and std")
        if not bool((s > 0).all()):
            raise ValueError("Normalize std must be > 0, got %s" % s.tolist())
        self.mean, self.std = m, s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x) or x.dim() < 3:
            raise ValueError("Normalize expects float [C, H, W] or [n, C, H, W] (apply ToTensor "
                             "first), got %s %s" % (x.dtype, tuple(x.shape)))
        c = x.shape[-3]
        for name, t in (("mean", self.mean), ("std", self.std)):
            if t.numel() not in (1, c):
                raise ValueError("Normalize %s has %d values for %d channel(s)"
                                 % (name, t.numel(), c))
        mean = self.mean.to(x.dtype).reshape(-1, 1, 1)
        std = self.std.to(x.dtype).reshape(-1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return "Normalize(mean=%s, std=%s)" % (self.mean.tolist(), self.std.tolist())


class Compose:
    def __init__(self, transforms: List[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return "Compose(%s)" % ", ".join(repr(t) for t in self.transforms)


_REGISTRY: Dict[str, Callable[..., Transform]] = {"ToTensor": ToTensor, "Normalize": Normalize}


def _parse_entry(entry: Any) -> Tuple[str, Dict[str, Any]]:
    """``'Name'``, ``['Name']`` or ``['Name', {kwargs}]`` -> (name, kwargs)."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str):
        if len(entry) == 1:
            return entry[0], {}
        if len(entry) == 2 and isinstance(entry[1], dict):
            return entry[0], dict(entry[1])
    raise ValueError("data.transform entry %r must look like ['Name'] or ['Name', {kwargs}]"
                     % (entry,))


def build_transform(transform_cfg: Sequence[Any], sample_dims: int = 2) -> Compose:
    """Build the callable for ``cfg.data.transform``; an empty list means ToTensor only.
    ``sample_dims``: the rank of one stored uint8 sample (2 grey, 3 channel-first colour).

    ToTensor is implied at the start when the list omits it (our inputs are always uint8), and
    must not appear anywhere else.
    """
    if transform_cfg is None:
        transform_cfg = []
    ops: List[Transform] = []
    for i, entry in enumerate(transform_cfg):
        name, kwargs = _parse_entry(entry)
        if name not in _REGISTRY:
            raise ValueError("unknown transform %r in data.transform entry %d (%r); supported: %s"
                             % (name, i, entry, ", ".join(sorted(_REGISTRY))))
        if name == "ToTensor" and (ops or i > 0):
            raise ValueError("data.transform entry %d (%r): ToTensor must be the first transform"
                             % (i, entry))
        if name == "ToTensor":
            kwargs.setdefault("sample_dims", sample_dims)
        try:
            ops.append(_REGISTRY[name](**kwargs))
        except (TypeError, ValueError) as e:
            raise ValueError("bad arguments in data.transform entry %d (%r): %s"
                             % (i, entry, e)) from None
    if not ops or not isinstance(ops[0], ToTensor):
        ops.insert(0, ToTensor(sample_dims))
    return Compose(ops)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def transform_for(transform_cfg: Sequence[Any], spec: Any,
                  key: str = "data.transform") -> Transform:
    """The batch transform of a dataset (``DatasetSpec``) under ``data.transform`` (or the list
    ``key`` names): token ids (any sample dtype but uint8) pass unchanged and refuse a transform
    list; uint8 images get ``build_transform``, an empty list meaning the dataset's
    ``default_transform``."""
    cfg = list(transform_cfg or [])
    if spec.sample_dtype != "uint8":
        if cfg:
            raise ValueError(f"{key}={cfg!r}: {spec.name} samples are {spec.sample_type} "
                             f"token ids, which take no transform; remove {key}")
        return identity
    return build_transform(cfg or list(spec.default_transform), len(spec.sample_shape))


def split_transform_lists(data_cfg) -> Dict[str, List[Any]]:
    """FS's per-split transform lists: ``data.val_transform`` / ``data.test_transform`` where
    given, ``data.transform`` for the train split and for a split whose own list is empty ("if not
    provided, use cfg.data.transform for all splits", FS's cfg_data.py)."""
    common = list(data_cfg.transform or [])
    return {"train": common, "val": list(data_cfg.val_transform or []) or common,
            "test": list(data_cfg.test_transform or []) or common}


def split_transforms(data_cfg, spec: Any) -> Dict[str, Transform]:
    """``transform_for`` of each split's list (``split_transform_lists``); splits with the same
    list share one callable."""
    own = {"val": list(data_cfg.val_transform or []), "test": list(data_cfg.test_transform or [])}
    built: Dict[str, Transform] = {}
    out: Dict[str, Transform] = {}
    for split, entries in split_transform_lists(data_cfg).items():
        same = repr(entries)
        if same not in built:
            name = f"data.{split}_transform" if own.get(split) else "data.transform"
            try:
                built[same] = transform_for(entries, spec, name)
            except ValueError as e:   # build_transform's say data.transform: name the list
                if own.get(split) and not str(e).startswith(name):
                    raise ValueError(f"{name}={entries!r}: {e}") from None
                raise
        out[split] = built[same]
    return out
