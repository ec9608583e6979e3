"""bench/fullsize.py's report() builds its rows from fullsize.json's raw figures alone, so a new
full-size run (30 min, not in `make test`) renders with the report code of this checkout: every
committed row (figure, goal, met, value, display) comes back from the raw section."""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import fullsize  # noqa: E402


def test_fullsize_rows_rebuild_from_raw():
    with open(os.path.join(ROOT, "bench", "results", "fullsize.json")) as f:
        res = json.load(f)
    raw = res["raw"]
    # the input files' sizes are not in raw; the rows read only their sum and the largest
    largest = int(re.search(r"largest file (\d+) MB", " ".join(
        r["display"] for r in res["rows"])).group(1)) * 1024 * 1024
    rest = raw["input_bytes"] - largest
    sizes = [largest] + [rest // (raw["files"] - 1)] * (raw["files"] - 2)
    sizes.append(raw["input_bytes"] - sum(sizes))
    got = fullsize.report(raw["generation"], sizes, raw["steps"], raw["bit_identity"],
                          raw["server"])
    def cells(rows):
        return [(r["figure"], r["goal"], r["met"], r["display"], r["value"],
                 bool(r.get("headline"))) for r in rows]
    assert cells(got["rows"]) == cells(res["rows"])
    assert got["summary"] == res["summary"]
