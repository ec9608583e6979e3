"""federate.min_clients_threshold against what a round can have, in-process (fake transport and
clock): a threshold above the clients a round trains is refused at start (FS's sampling rule,
``clients_per_round``), a pause counts the clients online as they are, and a give-up claims a
checkpoint only when one was written."""
import pytest

from federatedscope.core.configs.config import ConfigError
from federatedscope.core.message import MODEL_PARA
from federatedscope.core.workers.server_state import Phase
from server_harness import Harness, pause_after_losing_client_4, quiet


def _join(h, n):
    for c in range(1, n + 1):
        h.join(c, num_samples={"train": 10 * c, "val": 5, "test": 5})


@pytest.mark.parametrize("n,opts,per_round,by,fix", [
    (5, ("federate.sample_client_num", 2), 2, "federate.sample_client_num=2",
     "raise federate.sample_client_num"),
    (10, ("federate.sample_client_rate", 0.25), 2, "federate.sample_client_rate=0.25",
     "raise federate.sample_client_rate"),
    (4, (), 4, "no sampling: every client", "run more clients (manifest / federate.client_num)"),
])
def test_a_threshold_no_round_can_reach_is_refused_at_start_naming_both_keys(
        tmp_path, n, opts, per_round, by, fix):
    """5 x num 2 -> 2 per round; int(0.25 x 10) = 2; no sampling -> all 4: threshold per_round + 1
    is refused (the repro: 5 online, 2 sampled, threshold 3 paused and gave up), per_round runs."""
    with pytest.raises(ConfigError) as e:
        Harness(tmp_path / "bad", "federate.min_clients_threshold", per_round + 1, *opts,
                expected=n)
    assert str(e.value) == (
        f"federate.min_clients_threshold={per_round + 1} is above the {per_round} client(s) a "
        f"round trains ({by}, of {n} expected): no round could ever aggregate; set "
        f"federate.min_clients_threshold to at most {per_round}, or {fix}")
    h = Harness(tmp_path / "ok", "federate.min_clients_threshold", per_round, *opts, expected=n)
    _join(h, n)
    assert len(h.asked(MODEL_PARA, 0)) == per_round and h.server.round_state.phase is Phase.TRAINING


def test_the_pause_counts_the_clients_online_not_the_ones_sampled(tmp_path, caplog):
    """A strategy that samples fewer than are online (here: one of four) pauses saying both."""
    quiet(caplog)
    h = Harness(tmp_path, "federate.min_clients_threshold", 2, expected=4)
    h.server.aggregator.sample = lambda online, r: sorted(online)[:1]
    _join(h, 4)
    assert h.server.round_state.phase is Phase.PAUSED and h.asked(MODEL_PARA, 0) == []
    assert "paused: 1 client(s) sampled of the 4 online for round 1, fewer than " \
           "federate.min_clients_threshold=2; waiting up to 300s" in caplog.text


def _give_up(tmp_path, monkeypatch, *opts):
    """4 clients join, round 1 gets 3 of 4 updates (threshold 4), client 4 is lost: paused, and
    after graceful_termination_timeout=20 s the server gives up with exit 3."""
    h = Harness(tmp_path, "federate.total_round_num", 3, "federate.min_clients_threshold", 4,
                "federate.graceful_termination_timeout", 20.0, "distribute.heartbeat_timeout",
                0.0, *opts, monkeypatch=monkeypatch, expected=4)
    _join(h, 4)
    pause_after_losing_client_4(h)
    assert h.server.round_state.phase is Phase.PAUSED
    h.tick(after=20.5)
    assert h.server.finished and h.server.exit_code == 3
    return h


def test_a_give_up_claims_a_checkpoint_only_when_one_was_written(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    ckpt = tmp_path / "ckpt.pt"
    _give_up(tmp_path / "a", monkeypatch, "federate.save_to", str(ckpt))
    assert ckpt.exists()
    assert f"gave up after waiting 20s for clients; 0 round(s) done and checkpointed to {ckpt}; " \
           "restart with federate.restore_from to continue" in caplog.text
    caplog.clear()
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")                              # save_to below a file: the write fails
    _give_up(tmp_path / "b", monkeypatch, "federate.save_to", str(blocker / "ckpt.pt"))
    assert "cannot write the checkpoint" in caplog.text and "checkpointed to" not in caplog.text
    assert f"gave up after waiting 20s for clients; 0 round(s) done; the checkpoint " \
           f"{blocker / 'ckpt.pt'} could not be written now (see above): federate.restore_from " \
           "resumes from the last one written there" in caplog.text
    caplog.clear()
    _give_up(tmp_path / "c", monkeypatch)
    assert "checkpointed" not in caplog.text.replace("none checkpointed", "")
    assert "0 round(s) done, none checkpointed (federate.save_to is not set); to continue a run " \
           "that gives up, set federate.save_to and restart with federate.restore_from" \
        in caplog.text


@pytest.mark.parametrize("expected,opts,per_round,by,fix", [
    # rate 1.0 is a rate (all 4); rate 1.5 is none, so the count decides; rate 0 is none either
    (4, ("federate.sample_client_rate", 1.0), 4, "federate.sample_client_rate=1.0",
     "raise federate.sample_client_rate"),
    (5, ("federate.sample_client_rate", 1.5, "federate.sample_client_num", 2), 2,
     "federate.sample_client_num=2", "raise federate.sample_client_num"),
    (5, ("federate.sample_client_rate", 0.0, "federate.sample_client_num", 2), 2,
     "federate.sample_client_num=2", "raise federate.sample_client_num"),
    # a count of 1 and a count of every client are counts; 0 is none
    (5, ("federate.sample_client_num", 1), 1, "federate.sample_client_num=1",
     "raise federate.sample_client_num"),
    (4, ("federate.sample_client_num", 4), 4, "federate.sample_client_num=4",
     "raise federate.sample_client_num"),
    (4, ("federate.sample_client_num", 0), 4, "no sampling: every client",
     "run more clients (manifest / federate.client_num)"),
    # one expected client: a threshold of 2 can never be met either
    (1, (), 1, "no sampling: every client", "run more clients (manifest / federate.client_num)"),
])
def test_the_refusal_names_the_key_that_set_the_round_size(tmp_path, expected, opts, per_round,
                                                          by, fix):
    from federatedscope.core.workers.server_liveness import min_clients
    from server_harness import make_cfg
    cfg = make_cfg(tmp_path, "federate.min_clients_threshold", per_round + 1, *opts)
    with pytest.raises(ConfigError) as e:
        min_clients(cfg, expected)
    assert str(e.value) == (
        f"federate.min_clients_threshold={per_round + 1} is above the {per_round} client(s) a "
        f"round trains ({by}, of {expected} expected): no round could ever aggregate; set "
        f"federate.min_clients_threshold to at most {per_round}, or {fix}")
    ok = make_cfg(tmp_path, "federate.min_clients_threshold", per_round, *opts)
    assert min_clients(ok, expected) == per_round
    assert min_clients(cfg, 0) == per_round + 1      # no expected count yet: nothing to check
