"""CelebA and Shakespeare readers (LEAF JSON) on generated and hand-made input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dataset_tools import tool
from federatedscope import register
from federatedscope.cv.dataset import leaf_json
from federatedscope.cv.dataset.celeba import CELEBA, decode_image
from federatedscope.cv.dataset.leaf_json import write_leaf_json
from federatedscope.nlp.dataset.shakespeare import ALL_LETTERS, SHAKESPEARE, encode


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    tool("generate_celeba_sample").write_sample(str(root / "celeba" / "raw"), writers=5, seed=4,
                                                mean_samples=4)
    return str(root)


@pytest.fixture(scope="module")
def shakespeare_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    users = tool("generate_shakespeare_sample").generate(roles=6, seed=2, mean_samples=10)
    write_leaf_json(str(root / "shakespeare" / "raw" / "all_data" / "all_data_0.json"), users)
    return str(root)


def _json(path):
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------ CelebA
def test_celeba_reader_on_generated_sample(celeba_root):
    assert register.dataset_spec_dict["celeba"] is CELEBA
    assert CELEBA.sample_type == "uint8[3,84,84]" and CELEBA.num_classes == 2
    (path,) = CELEBA.list_inputs(celeba_root)
    doc = _json(path)
    writers = list(CELEBA.iter_writers(celeba_root))
    assert [w.writer_id for w in writers] == doc["users"] and len(writers) == 5
    for w in writers:
        n = len(doc["user_data"][w.writer_id]["y"])
        assert w.x.shape == (n, 3, 84, 84) and w.x.dtype == np.uint8
        assert w.y.dtype == np.int64 and w.y.tolist() == doc["user_data"][w.writer_id]["y"]
        assert w.source == path and w.split is None


def test_celeba_decode_keeps_colour_planes_and_orientation(tmp_path):
    # 178x218 like CelebA: top half pure red, bottom half pure blue
    img = np.zeros((218, 178, 3), np.uint8)
    img[:109, :, 0] = 255
    img[109:, :, 2] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    x = decode_image(str(tmp_path / "a.png"))
    assert x.shape == (3, 84, 84) and x.dtype == np.uint8
    assert x[:, 5, 40].tolist() == [255, 0, 0]      # row 5 is in the top (red) half
    assert x[:, 78, 40].tolist() == [0, 0, 255]     # row 78 in the bottom (blue) half


def test_celeba_fs_pixel_lists_and_leaf_split_tree(tmp_path):
    hwc = np.arange(84 * 84 * 3).reshape(84, 84, 3) % 251
    d = tmp_path / "celeba" / "data"  # LEAF's own output tree, train/ + test/
    write_leaf_json(str(d / "train" / "t.json"), [("7", [hwc.reshape(-1).tolist()], [1])])
    write_leaf_json(str(d / "test" / "t.json"), [("7", [hwc.reshape(-1).tolist()] * 2, [0, 1])])
    tr, te = CELEBA.iter_writers(str(tmp_path))
    assert (tr.split, te.split, tr.writer_id, te.writer_id) == ("train", "test", "7", "7")
    assert te.y.tolist() == [0, 1]
    # HWC pixel list -> CHW: channel c of pixel (h, w) is hwc[h, w, c]
    assert tr.x[0, 2, 10, 20] == hwc[10, 20, 2] and tr.x[0, 0, 83, 1] == hwc[83, 1, 0]


def _one_writer(tmp_path, x, y):
    write_leaf_json(str(tmp_path / "celeba" / "raw" / "all_data" / "a.json"), [("9", x, y)])
    return list(CELEBA.iter_writers(str(tmp_path)))


def test_celeba_errors_name_file_writer_sample_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"celeba/raw/\*\.json.*generate_celeba_sample"):
        CELEBA.list_inputs(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"a\.json, writer 9, sample 0: image 1\.jpg"):
        _one_writer(tmp_path, ["1.jpg"], [0])
    with pytest.raises(ValueError, match="plain file name"):
        _one_writer(tmp_path, ["../../etc/passwd"], [0])
    os.makedirs(tmp_path / "celeba" / "raw" / "img_align_celeba")
    Image.new("RGB", (178, 218)).save(tmp_path / "celeba" / "raw" / "img_align_celeba" / "1.jpg")
    with pytest.raises(ValueError, match=r"writer 9, sample 1: label 2 is not"):
        _one_writer(tmp_path, ["1.jpg", "1.jpg"], [1, 2])
    for bad in (0.5, True, "1", float("nan")):
        with pytest.raises(ValueError, match=r"sample 0: label .* is not a JSON integer"):
            _one_writer(tmp_path, ["1.jpg"], [bad])
    assert _one_writer(tmp_path, ["1.jpg"], [1])[0].x.shape == (1, 3, 84, 84)
    # LEAF's own script writes (attr + 1) / 2, i.e. 0.0 / 1.0 under Python 3
    (w,) = _one_writer(tmp_path, ["1.jpg", "1.jpg"], [1.0, 0.0])
    assert w.y.tolist() == [1, 0] and w.y.dtype == np.int64


def test_leaf_reader_holds_one_file_at_a_time(celeba_root, tmp_path, monkeypatch):
    d = tmp_path / "shakespeare" / "raw"
    text = "a" * 81
    for i in range(3):
        write_leaf_json(str(d / f"f{i}.json"), [(f"w{i}a", [text[:80]], ["a"]),
                                               (f"w{i}b", [text[:80]], ["a"])])
    opened = []
    real = leaf_json.load_leaf_json
    monkeypatch.setattr(leaf_json, "load_leaf_json", lambda p: opened.append(p) or real(p))
    seen = []
    for w in SHAKESPEARE.iter_writers(str(tmp_path)):
        seen.append(w.writer_id)
        # file i is opened only once every writer of file i-1 has been handed out
        assert len(opened) == (len(seen) + 1) // 2
    assert seen == ["w0a", "w0b", "w1a", "w1b", "w2a", "w2b"]


# ------------------------------------------------------------------------------- Shakespeare
def test_cv_imports_without_pillow_and_celeba_says_how_to_get_it(tmp_path):
    """Registering CelebA must not make Pillow a need of every importer of the cv package (the
    Flower app in the peers bench imports it for FEMNIST's ConvNet2 in an environment without
    Pillow); reading a CelebA image without it names the file and the fix."""
    code = ("import sys; sys.modules['PIL'] = None\n"
            "import federatedscope.cv\n"
            "from federatedscope.cv.dataset.celeba import decode_image\n"
            "try:\n    decode_image('x/000001.jpg')\n"
            "except ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "x/000001.jpg: reading CelebA's JPEG images needs Pillow; " \
                                 "pip install Pillow"


def test_vocabulary_is_leafs():
    assert len(ALL_LETTERS) == 80 and len(set(ALL_LETTERS)) == 80
    assert encode("\n !a}", "t").tolist() == [0, 1, 2, 53, 79]
    assert encode("AZ[]z", "t").tolist() == [25, 50, 51, 52, 78]


def test_shakespeare_reader_on_generated_sample(shakespeare_root):
    assert register.dataset_spec_dict["shakespeare"] is SHAKESPEARE
    assert SHAKESPEARE.sample_type == "int64[80]" and SHAKESPEARE.num_classes == 80
    (path,) = SHAKESPEARE.list_inputs(shakespeare_root)
    doc = _json(path)
    writers = list(SHAKESPEARE.iter_writers(shakespeare_root))
    assert [w.writer_id for w in writers] == doc["users"] and len(writers) == 6
    for w in writers:
        entry = doc["user_data"][w.writer_id]
        assert w.x.dtype == np.int64 and w.x.shape == (len(entry["x"]), 80)
        assert ["".join(ALL_LETTERS[i] for i in row) for row in w.x] == entry["x"]
        assert [ALL_LETTERS[i] for i in w.y] == entry["y"]
        # LEAF's windows: y is the character after x, and windows slide by one
        assert (w.x[1:, -1] == w.y[:-1]).all()


@pytest.mark.parametrize("x,y,match", [
    ("a" * 79, "b", "string of 80 characters"),
    ("a" * 40 + "\u00e9" + "a" * 39, "b", r"character '\u00e9' at position 40"),
    ("a" * 80, "bc", "one character"),
    ("a" * 80, "~", r"sample 0 \(label\): character '~'"),
])
def test_shakespeare_errors_name_writer_and_sample(tmp_path, x, y, match):
    write_leaf_json(str(tmp_path / "shakespeare" / "raw" / "p.json"), [("ROLE", [x], [y])])
    with pytest.raises(ValueError, match=r"p\.json, writer ROLE, sample 0.*" if "label" not in match
                       else match):
        list(SHAKESPEARE.iter_writers(str(tmp_path)))
    with pytest.raises(ValueError, match=match):
        list(SHAKESPEARE.iter_writers(str(tmp_path)))
