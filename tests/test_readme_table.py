"""README's cost table is generated from bench/results/*.json and must agree with them."""
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import render_readme  # noqa: E402

# Peer figures that were once typed by hand; they may only appear when a JSON produced them.
HAND_TYPED = ["Flower 1.0022", "FS 1.34", "460–540", "FS 100 %", "Flower 0.5–1.8", "FS 1,060",
              "FS distributed 5.3", "Flower 1.2"]


def _readme() -> str:
    with open(render_readme.README) as f:
        return f.read()


def test_readme_cost_table_matches_results():
    text = _readme()
    assert render_readme.BEGIN in text and render_readme.END in text
    assert render_readme.replace(text, render_readme.section()) == text, (
        "README.md's cost table differs from bench/results/*.json; run: python bench/render_readme.py")


def test_table_follows_the_jsons_misses_included(tmp_path):
    """Change one figure and one goal's outcome in a copy of the results: the rendered section
    must show both, so the README check above cannot pass with a stale table."""
    res = tmp_path / "results"
    shutil.copytree(render_readme.RESULTS, res, ignore=shutil.ignore_patterns("tmp", "*.png"))
    path = next(p for p in sorted(res.glob("*.json"))
                if any(r.get("headline") for r in json.loads(p.read_text()).get("rows", [])))
    data = json.loads(path.read_text())
    r = next(r for r in data["rows"] if r.get("headline"))
    r["display"], r["met"] = "424242.0 (changed)", False
    path.write_text(json.dumps(data))
    body = render_readme.section(str(res))
    line = next(line for line in body.splitlines() if "424242.0 (changed)" in line)
    assert line.endswith("❌ missed |") and line.startswith(f"| {data['name']} |")
    assert render_readme.replace(_readme(), body) != _readme()


def test_no_hand_typed_peer_figures():
    """Peer numbers come from the peers benchmark's JSON only, never from literals."""
    bench = os.path.join(ROOT, "bench")
    sources = [os.path.join(bench, f) for f in os.listdir(bench) if f.endswith(".py")]
    sources += [os.path.join(bench, "peers", f) for f in os.listdir(os.path.join(bench, "peers"))
                if f.endswith(".py")]
    text = _readme()
    readme_outside = text.split(render_readme.BEGIN)[0] + text.split(render_readme.END)[1]
    for name, body in [("README.md (outside the generated table)", readme_outside)] + [
            (p, open(p).read()) for p in sources]:
        if name.endswith("test_readme_table.py"):
            continue
        found = [s for s in HAND_TYPED if s in body]
        assert not found, f"{name} types peer figures by hand: {found}"
