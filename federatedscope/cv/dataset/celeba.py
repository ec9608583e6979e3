"""CelebA as LEAF ships it, FS's ``data.type: celeba``: one writer per celebrity, binary label
(LEAF's 'Smiling' attribute), images stored as uint8 ``[3, 84, 84]`` (FS's size).

Input (see ``leaf_json`` for where the JSON is looked for): LEAF JSON (labels 0/1, or 0.0/1.0 as
LEAF's Python 3 preprocessing writes them) whose ``x`` are image file
names under ``img_align_celeba/`` (next to the JSON, in ``raw/img_align_celeba`` beside LEAF's
``all_data/``, or in ``<root>/celeba/raw/img_align_celeba``), or FS's preprocessed JSON whose
``x`` are already 84*84*3 pixel lists (HWC, 0..255). Images are decoded like FS's preprocessing:
RGB, thumbnail to 84x84 (Lanczos), then resized to exactly 84x84 (bicubic).
"""
import os
from typing import Iterator, List

import numpy as np

from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.cv.dataset.leaf_json import (find_leaf_input, int_labels, iter_leaf_users,
                                                 list_leaf_inputs)
from federatedscope.register import register_dataset_spec

NAME = "celeba"
SIDE = 84
NUM_CLASSES = 2
IMAGE_DIR = "img_align_celeba"


def image_dirs(root: str, json_dir: str) -> List[str]:
    return [os.path.join(json_dir, IMAGE_DIR), os.path.join(json_dir, "raw", IMAGE_DIR),
            os.path.join(root, NAME, "raw", IMAGE_DIR)]


def decode_image(path: str) -> np.ndarray:
    """One image file -> uint8 [3, 84, 84]; an unreadable file names itself."""
    # Pillow is imported here, not at module load: registering CelebA must not make every
    # importer of ``federatedscope.cv`` need it (Flower's app in the peers bench, FEMNIST jobs).
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f"{path}: reading CelebA's JPEG images needs Pillow; "
                         f"pip install Pillow") from None
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
            im = im.resize((SIDE, SIDE), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e}); re-extract img_align_celeba") \
            from None


def _pixels(x: list, where: str) -> np.ndarray:
    """FS's preprocessed sample: 84*84*3 integers 0..255 in HWC order."""
    arr = np.asarray(x)
    if arr.shape != (SIDE * SIDE * 3,) or arr.dtype.kind not in "iu" \
            or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"{where}: a pixel-list sample must be {SIDE * SIDE * 3} integers in "
                         f"0..255 (84x84 RGB), got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.uint8).reshape(SIDE, SIDE, 3).transpose(2, 0, 1)


def _find_image(dirs: List[str], name: str, where: str) -> str:
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"{where}: image name {name!r} must be a plain file name inside "
                         f"{IMAGE_DIR}/ (no folders)")
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{where}: image {name} is in none of {', '.join(dirs)}; extract "
                            f"LEAF's img_align_celeba.zip into one of them")


def _samples(xs: list, where: str, dirs: List[str]) -> np.ndarray:
    out = np.empty((len(xs), 3, SIDE, SIDE), dtype=np.uint8)
    for i, x in enumerate(xs):
        at = f"{where}, sample {i}"
        if isinstance(x, str):
            out[i] = decode_image(_find_image(dirs, x, at))
        elif isinstance(x, list):
            out[i] = _pixels(x, at)
        else:
            raise ValueError(f"{at}: x must be an image file name or a pixel list, got "
                             f"{type(x).__name__}")
    return out


def iter_celeba_writers(root: str) -> Iterator[WriterSamples]:
    """Every celebrity of every LEAF file, one JSON file (and one writer's images) at a time."""
    json_dir, files = find_leaf_input(root, NAME)
    dirs = image_dirs(root, json_dir)
    for path, split in files:
        for uid, xs, ys in iter_leaf_users(path):
            where = f"{path}, writer {uid}"
            y = int_labels(ys, where, NUM_CLASSES, integral_floats=True)
            yield WriterSamples(uid, _samples(xs, where, dirs), y, path, split)


def list_celeba_inputs(root: str) -> List[str]:
    return list_leaf_inputs(root, NAME)


CELEBA = DatasetSpec(name=NAME, sample_dtype="uint8", sample_shape=(3, SIDE, SIDE),
                     num_classes=NUM_CLASSES, model_input=(3, SIDE, SIDE),
                     iter_writers=iter_celeba_writers, list_inputs=list_celeba_inputs,
                     has_writers=True, default_transform=(["ToTensor"],))

register_dataset_spec(NAME, CELEBA)
