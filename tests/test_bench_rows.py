"""Benchmarks whose runs take half an hour (not in `make test`) build their rows from raw figures
alone, so the row code is checked here without a run: fullsize.json's committed rows come back
from its raw section, and the peers rows and note follow hand-computed figures."""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import fullsize  # noqa: E402
from bench.peers import compare  # noqa: E402


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
    assert got["notes"] == res["notes"]      # the misses' causes too, from the same figures


def _system(wall, cpu, acc=0.8745):
    return {"wall_s": wall, "cpu_s": cpu, "final_acc": acc}


def test_peers_rows_and_the_training_bound_note():
    """Floor 640 CPU-s on 4 cores is a 160 s bound; distributed 166 s wall, 620 CPU-s; Flower
    400 s wall, 900 CPU-s: 1.0375 of the bound (met), 0.96875 of the floor's CPU (met), 0.415 of
    Flower's wall (met at <= 0.5), no note. Flower at 300 s: 0.5533 (missed) and a note."""
    res = {"floor": _system(900.0, 640.0), "standalone": _system(700.0, 672.0),
           "distributed": _system(166.0, 620.0), "flower": _system(400.0, 900.0, 0.8731)}
    rows = {r["figure"]: r for r in compare._rows(res, {}, 4)}
    bound = rows["distributed shard mode: job wall / (floor CPU ÷ 4 cores)"]
    assert (bound["value"], bound["met"], bound["goal"]) == (166 / 160, True, "≤ 1.05")
    assert bound["display"] == "1.04 (166 s vs 160 s)"
    cpu = rows["distributed shard mode: total CPU / plain-loop floor's"]
    assert (cpu["value"], cpu["met"]) == (620 / 640, True)
    alone = rows["standalone: total CPU / plain-loop floor's"]
    assert (alone["value"], alone["met"]) == (1.05, True)    # at the goal: met
    wall = rows["distributed shard mode / Flower deployment mode: job wall"]
    assert (wall["value"], wall["met"], wall["goal"]) == (0.415, True, "≤ 0.5")
    assert compare._notes(res, 4) == []
    res["flower"] = _system(300.0, 900.0)
    wall = {r["figure"]: r for r in compare._rows(res, {}, 4)}[
        "distributed shard mode / Flower deployment mode: job wall"]
    assert (round(wall["value"], 4), wall["met"]) == (0.5533, False)
    note, = compare._notes(res, 4)
    assert "640 CPU-s over 4 cores is 160 s" in note and "would score 0.53 against" in note
    assert note.endswith("it ran at 1.88×.")
    res["distributed"] = _system(240.0, 700.0)     # over both goals
    rows = {r["figure"]: r for r in compare._rows(res, {}, 4)}
    assert not rows["distributed shard mode: job wall / (floor CPU ÷ 4 cores)"]["met"]
    assert not rows["distributed shard mode: total CPU / plain-loop floor's"]["met"]


def test_the_side_by_side_note_rescales_the_floor_by_what_training_at_once_costs():
    """Floor 400 CPU-s; distributed 440 CPU-s, 240 s wall on 2 cores (1.10x the floor's CPU,
    1.20x its 200 s bound). The floor's round: 80 CPU-s in turn, 88 CPU-s as 3 processes at
    once: 1.10x, so at that rate the distributed job is 440 / 440 = 1.00x the CPU and
    240 / 220 = 1.09x the wall bound. The note comes before the Flower note."""
    res = {"floor": _system(500.0, 400.0), "distributed": _system(240.0, 440.0),
           "flower": _system(300.0, 900.0)}
    side = {"in_turn_cpu_s": 80.0, "side_by_side_cpu_s": 88.0, "ratio": 1.1}
    note, flower = compare._notes(res, 2, side)
    assert note.startswith("Missed against the floor (CPU 1.10×, wall 1.20× its bound)")
    assert "80.0 CPU-s in turn and 88.0 CPU-s as 3 processes at once" in note
    assert note.endswith("1.10×, with no framework at all. Against the floor at that rate the "
                         "distributed job's CPU is 1.00× and its wall 1.09×.")
    assert flower.startswith("The wall ratio against Flower")
    del res["flower"]
    assert compare._notes(res, 2, side) == [note]


def test_peers_rows_without_flower_say_why():
    res = {"floor": _system(900.0, 640.0), "distributed": _system(330.0, 620.0)}
    rows = compare._rows(res, {"flower": "not installed"}, 2)
    wall = [r for r in rows if r["figure"].endswith("job wall")][-1]
    assert (wall["met"], wall["display"]) == (False, "not measured: not installed")
    assert compare._notes(res, 2) == []


def test_private_peak_leaves_out_file_backed_pages():
    """The same shard load measured after two boots (client_memory, 0e05297 and this session):
    VmHWM 255 vs 313 MB, RssFile 89 vs 147 MB (libraries mapped with huge pages after a fresh
    boot), the private peak 166 MB both times."""
    from harness.proc_stats import private_peak_kb
    runs = [{"VmHWM": 255 * 1024, "RssFile": 89 * 1024, "RssAnon": 154 * 1024},
            {"VmHWM": 313 * 1024, "RssFile": 147 * 1024, "RssAnon": 154 * 1024}]
    assert [private_peak_kb(r) for r in runs] == [166 * 1024, 166 * 1024]
    assert private_peak_kb({"VmHWM": 4096}) == 4096      # no RssFile line: the whole peak


def test_a_server_peak_row_shows_its_file_backed_part_when_recorded():
    from bench import scale
    r = {"n": 1000, "rounds": 3, "peak_mb": 516.4, "file_backed_mb": 173.2, "round_s": [11.7],
         "cpu_per_round_s": 9.3, "idle_cpu_pct": 2.4, "storm_all_joined_s": 1.6,
         "swarm": {"join_p50_s": 0.76, "join_p99_s": 1.38, "messages_lost": 0, "stayed": 1001,
                   "finished": 1001}}
    peak = scale.n_rows(r, 1_940_000, 1e9, "N=1000", "≤ 600 MB", True, True)[0]
    assert peak["display"] == "516 MB (343 MB private, 173 MB file-backed)"
    del r["file_backed_mb"]       # runs from before it was recorded: the whole peak only
    assert scale.n_rows(r, 1_940_000, 1e9, "N=1000", "≤ 600 MB", True, True)[0]["display"] == \
        "516 MB"


def test_the_sampled_scale_miss_names_both_continuation_sizes_and_the_messages_per_upload():
    from bench import scale
    # 64 MiB // 1,001 is under the 128 KiB floor: 131,072 less the 4-byte tag and gRPC's 5-byte
    # prefix = 131,063 B, 15 messages for 1,940,000 B; 64 MiB // 101 = 664,444 - 9 = 664,435 B
    # (649 KiB), 3 messages
    note = scale._sampled_miss(1.563, 1_940_000)
    assert note.startswith("Missed (1.56×): the 1,000-client server announces 128 KiB upload "
                           "continuations (64 MiB shared by its 1,001 expected clients), the "
                           "100-client one 649 KiB, so each 1.85 MB upload arrives in 15 gRPC "
                           "messages instead of 3, ")


def test_a_fullsize_round_miss_counts_the_swarm_s_cpu_beside_the_server_s():
    r = {"n": 3549, "peak_mb": 100.0, "rss_joined_mb": 90.0, "round_s": [31.0, 32.0, 33.0],
         "cpu_per_round_s": 25.2, "swarm_cpu_per_round_s": 40.2,
         "storm_cpu_s": {"server": 1.0, "swarm": 1.0}, "swarm": {"join_p99_s": 1.0}}
    (note,) = fullsize._miss_causes(r, 3.4, 30.2)
    assert note == ("Round time: the allowance (30.2 s) counts the transfer floor (3.4 s) and the "
                    "server's CPU, not the swarm's: its 3,550 clients decode, answer and upload "
                    "on the same 2 cores as the server (40.2 CPU-s per round, the server 25.2: "
                    "32.7 s of both cores before any wait).")
    del r["swarm_cpu_per_round_s"]          # runs from before it was recorded
    assert fullsize._miss_causes(r, 3.4, 30.2)[0].endswith("on the same 2 cores as the server.")
    r["round_s"] = [30.2]                   # at the allowance: no note
    assert fullsize._miss_causes(r, 3.4, 30.2) == []
