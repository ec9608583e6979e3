"""FS's round steps on the Server: an FS-style subclass that overrides ``check_client_join_in``,
``trigger_for_start``, ``check_and_move_on``, ``_perform_federated_aggregation``,
``_start_new_training_round``, ``eval`` or ``terminate`` changes what the server does; and the
pure rule behind ``check_and_move_on`` (``RoundState.round_step``) at its edges."""
import pytest
import torch

from federatedscope.core.message import EVALUATE, FINISH, MODEL_PARA
from federatedscope.core.workers.server import Server
from federatedscope.core.workers.server_state import Phase, RoundState, Step
from server_harness import Harness, good_metrics

N = 5


def _harness(tmp_path, cls, *opts, rounds=3):
    h = Harness(tmp_path, "federate.total_round_num", rounds, *opts, expected=N)
    h.server = h.build(cls, N, distributed=True)
    return h


def _join_all(h):
    """Clients 1..N, client c declaring 10 c training samples."""
    for c in range(1, N + 1):
        h.join(c, num_samples={"train": 10 * c, "val": 5, "test": 5})


def _answer_round(h, r, clients, delta=0.1):
    g = h.global_state()
    for c in clients:
        h.update(c, r, h.shifted(delta, g), size=10 * c)


def _answer_eval(h, r, clients):
    for c in clients:
        h.metrics(c, r, good_metrics())


# ------------------------------------------------------------------ overrides take effect
class StartWithThree(Server):
    """FS users lower the start condition by overriding check_client_join_in."""
    def check_client_join_in(self):
        return self.clients.online_count() >= 3


def test_check_client_join_in_decides_when_training_starts(tmp_path):
    h = _harness(tmp_path, StartWithThree)
    for c in (1, 2):
        h.join(c)
    assert h.server.round_state.phase is Phase.JOINING and h.asked(MODEL_PARA, 0) == []
    h.join(3)
    assert h.server.round_state.phase is Phase.TRAINING and h.asked(MODEL_PARA, 0) == [1, 2, 3]
    h.join(4)                              # joined mid-round: not sampled into round 1
    assert h.asked(MODEL_PARA, 0) == [1, 2, 3]


class Recording(Server):
    """Every FS step recorded, then the default run."""
    def __init__(self, *a, **k):
        self.calls = []
        super().__init__(*a, **k)

    def trigger_for_start(self):
        self.calls.append("start")
        super().trigger_for_start()

    def _start_new_training_round(self, aggregated_num=0):
        self.calls.append(f"round {self.round + 1}")
        super()._start_new_training_round(aggregated_num)

    def _perform_federated_aggregation(self):
        n = super()._perform_federated_aggregation()
        self.calls.append(f"aggregated {n}")
        return n

    def eval(self):
        self.calls.append(f"eval {self.round_state.eval_owed}")
        super().eval()

    def terminate(self, msg_type=FINISH):
        self.calls.append(f"terminate {msg_type}")
        super().terminate(msg_type)


def test_every_fs_step_is_called_in_order_over_three_rounds(tmp_path):
    h = _harness(tmp_path, Recording, "eval.freq", 2, rounds=3)
    _join_all(h)
    for r in range(3):
        _answer_round(h, r, range(1, N + 1))
        if r + 1 in (2, 3):                # eval.freq 2, and always after the last round
            _answer_eval(h, r + 1, range(1, N + 1))
    assert h.server.calls == ["start", "round 1", "aggregated 5", "round 2", "aggregated 5",
                              "eval 2", "round 3", "aggregated 5", "eval 3", "terminate finish"]
    assert h.server.finished and h.server.exit_code == 0 and h.server.round == 3
    assert [line["Round"] for line in h.eval_lines() if not line.get("Final")] == [2, 3]


class HalveTheStep(Server):
    """A server-side rule: the global model moves half as far as FedAvg would take it."""
    def _perform_federated_aggregation(self):
        before = {k: v.clone() for k, v in self.model.state_dict().items()}
        n = super()._perform_federated_aggregation()
        after = self.model.state_dict()
        self.model.load_state_dict({k: (before[k] + (after[k] - before[k]) / 2
                                        if v.is_floating_point() else v)
                                    for k, v in after.items()})
        return n


def test_an_overridden_aggregation_is_the_model_the_round_ends_with(tmp_path):
    h = _harness(tmp_path, HalveTheStep, rounds=4)
    _join_all(h)
    start = h.global_state()
    for r in range(4):
        _answer_round(h, r, range(1, N + 1), delta=0.2)     # FedAvg of equal shifts: +0.2
        _answer_eval(h, r + 1, range(1, N + 1))
    name = next(k for k, v in start.items() if v.is_floating_point())
    # each round moves half of 0.2: four rounds move 0.4 in all
    assert torch.allclose(h.global_state()[name], start[name] + 0.4, atol=1e-5)
    assert h.server.finished and h.server.round == 4


class ThreeOfFive(Server):
    """FS's buffer: move on once 3 updates are in, stragglers not waited for."""
    def check_and_move_on(self, check_eval_result=False, min_received_num=None):
        return super().check_and_move_on(check_eval_result, min_received_num=3)


def test_check_and_move_on_with_a_buffer_size_aggregates_the_first_three(tmp_path):
    h = _harness(tmp_path, ThreeOfFive, "federate.min_clients_threshold", 2, rounds=2)
    _join_all(h)
    g = h.global_state()
    for c, delta in ((4, 0.3), (2, 0.6)):
        h.update(c, 0, h.shifted(delta, g), size=10 * c)
        assert h.server.round == 0
    h.update(5, 0, h.shifted(0.9, g), size=50)
    assert h.server.round == 1              # 3 in: aggregated without clients 1 and 3
    name = next(k for k, v in g.items() if v.is_floating_point())
    want = g[name] + (0.3 * 40 + 0.6 * 20 + 0.9 * 50) / 110
    assert torch.allclose(h.global_state()[name], want, atol=1e-5)
    assert h.asked(EVALUATE, 1) == [1, 2, 3, 4, 5]       # the evaluation asks everyone
    h.update(1, 0, h.shifted(5.0, g), size=10)   # a straggler's late update changes nothing
    assert torch.allclose(h.global_state()[name], want, atol=1e-5)


class NoClientEval(Server):
    """An eval that asks nobody and reports nothing: the job still ends after its rounds."""
    def eval(self):
        self.round_state.eval_owed = None
        self._resume()


def test_an_overridden_eval_replaces_the_clients_evaluation(tmp_path):
    h = _harness(tmp_path, NoClientEval, rounds=3)
    _join_all(h)
    for r in range(3):
        _answer_round(h, r, range(1, N + 1))
    assert all(h.asked(EVALUATE, r) == [] for r in range(1, 4))
    assert h.server.finished and h.server.round == 3 and h.asked(FINISH, 3) == list(range(1, 6))


# ------------------------------------------------------------------ the rule itself
def _state(sampled, pending, refused=(), timed_out=False, phase=Phase.TRAINING):
    st = RoundState()
    st.begin_round(set(sampled), 0.0)
    st.pending, st.refused, st.timed_out, st.phase = set(pending), \
        {c: "bad" for c in refused}, timed_out, phase
    return st


@pytest.mark.parametrize("pending, got, timed_out, buffer, threshold, want", [
    ({5}, 4, False, None, 3, Step.WAIT),          # one still awaited, no timeout, no buffer
    ({5}, 4, True, None, 3, Step.AGGREGATE),      # timed out with enough
    ({4, 5}, 3, True, None, 3, Step.AGGREGATE),   # exactly the threshold
    ({3, 4, 5}, 2, True, None, 3, Step.WAIT),     # timed out, too few: keep waiting
    ({4, 5}, 3, False, 3, 3, Step.AGGREGATE),     # the buffer is full
    ({3, 4, 5}, 2, False, 3, 2, Step.WAIT),       # one short of the buffer
    ({3, 4, 5}, 2, False, 2, 3, Step.WAIT),       # buffer full, threshold not
    (set(), 5, False, None, 3, Step.AGGREGATE),   # everyone answered
    (set(), 2, False, None, 3, Step.TOO_FEW),     # nobody left, 2 < 3
    (set(), 3, False, 9, 3, Step.AGGREGATE),      # nobody left: the buffer does not matter
])
def test_round_step_at_its_edges(pending, got, timed_out, buffer, threshold, want):
    st = _state(range(1, 6), pending, timed_out=timed_out)
    assert st.round_step(got, threshold, buffer) is want


def test_round_step_diverged_only_when_every_sampled_update_was_refused():
    assert _state({1, 2, 3, 4}, set(), refused={1, 2, 3, 4}).round_step(0, 2) is Step.DIVERGED
    assert _state({1, 2, 3, 4}, set(), refused={1, 2, 3}).round_step(0, 2) is Step.TOO_FEW
    assert _state({1, 2, 3, 4}, set(), refused={1, 2, 3}).round_step(1, 1) is Step.AGGREGATE
    assert _state({1, 2, 3, 4}, set()).round_step(0, 2) is Step.TOO_FEW


@pytest.mark.parametrize("phase", [Phase.JOINING, Phase.EVALUATING, Phase.FINISHED])
def test_round_step_waits_outside_a_round(phase):
    assert _state({1, 2}, set(), phase=phase).round_step(2, 1) is Step.WAIT
    assert _state({1, 2}, set(), phase=Phase.PAUSED).round_step(2, 1) is Step.AGGREGATE
    assert _state(set(), set()).round_step(3, 1) is Step.WAIT     # nothing was sampled


# ------------------------------------------------------------------ what the steps return
class Returns(Server):
    """Records what every check_and_move_on returned: (check_eval_result, moved on)."""
    def __init__(self, *a, **k):
        self.returned = []
        super().__init__(*a, **k)

    def check_and_move_on(self, check_eval_result=False, min_received_num=None):
        moved = super().check_and_move_on(check_eval_result, min_received_num)
        self.returned.append((check_eval_result, moved))
        return moved


def test_check_and_move_on_says_true_exactly_when_the_round_or_evaluation_moved_on(tmp_path):
    h = _harness(tmp_path, Returns, rounds=2)
    _join_all(h)
    _answer_round(h, 0, range(1, N + 1))
    # four updates wait, the fifth aggregates; the evaluation starts and asks everyone
    assert h.server.returned == [(False, False)] * 4 + [(True, False), (False, True)]
    h.server.returned.clear()
    _answer_eval(h, 1, range(1, N + 1))
    assert h.server.returned == [(True, False)] * 4 + [(True, True)]
    assert h.server.round_state.phase is Phase.TRAINING and h.asked(MODEL_PARA, 1) == [1, 2, 3, 4, 5]
    h.server.returned.clear()
    assert h.server.check_and_move_on(check_eval_result=True) is False   # no evaluation in flight


def test_a_paused_diverged_or_faulted_round_does_not_move_on(tmp_path, monkeypatch):
    # too few: 2 good updates and 3 refused (non-finite) with a threshold of 3
    h = _harness(tmp_path, Returns, "federate.min_clients_threshold", 3, rounds=2)
    _join_all(h)
    g = h.global_state()
    for c in range(1, N + 1):
        h.update(c, 0, h.shifted(0.1 if c <= 2 else float("nan"), g), size=10 * c)
    assert h.server.returned[-1] == (False, False) and h.server.round_state.phase is Phase.PAUSED
    # diverged: every update refused
    d = _harness(tmp_path / "d", Returns, rounds=2)
    _join_all(d)
    for c in range(1, N + 1):
        d.update(c, 0, d.shifted(float("nan"), d.global_state()), size=10 * c)
    assert d.server.returned[-1] == (False, False) and d.server.exit_code == 5
    # the aggregation step raises the rule's fault: the job stops, nothing moved on
    from federatedscope.core.aggregators.aggregator import AggregationFault

    class Faulty(Returns):
        def _perform_federated_aggregation(self):
            raise AggregationFault("the rule returned nothing")
    f = _harness(tmp_path / "f", Faulty, rounds=2)
    _join_all(f)
    _answer_round(f, 0, range(1, N + 1))
    assert f.server.returned[-1] == (False, False)
    assert f.server.finished and f.server.exit_code == 1 and f.server.round == 0


def test_an_evaluation_with_no_results_and_too_few_online_does_not_move_on(tmp_path, monkeypatch):
    h = Harness(tmp_path, "federate.total_round_num", 2, "distribute.heartbeat_timeout", 0.0,
                monkeypatch=monkeypatch, expected=N)
    h.server = h.build(Returns, N, distributed=True)
    _join_all(h)
    _answer_round(h, 0, range(1, N + 1))
    h.server.returned.clear()
    for c in range(1, N + 1):
        h.disconnect(c)
    h.tick(after=31.0)                            # past the grace: every client is gone
    assert (True, False) in h.server.returned and (True, True) not in h.server.returned
    assert h.server.round_state.phase is Phase.PAUSED and h.server.round_state.eval_owed == 1


# ------------------------------------------------------------------ FS's arguments
def test_fs_arguments_left_out_take_the_config_and_fs_defaults(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 4, "federate.client_num", 6, expected=6)
    s = Server(config=h.cfg, model=h.model, comm=h.comm, monitor=h.monitor,
               admission=h.admission)
    assert (s.ID, s.state, s.client_num, s.total_round_num) == (0, 0, 6, 4)
    assert (s.device, s.data, s.distributed, s._cfg) == ("cpu", None, False, h.cfg)
    given = Server(ID=-1, state=3, config=h.cfg, data=None, model=h.model, client_num=N,
                   total_round_num=2, device="cuda:1", comm=h.comm, monitor=h.monitor,
                   admission=h.admission, distributed=True)
    # FS's id -1 and first round 3 give way to the server's id and the checkpoint's round (none)
    assert (given.ID, given.state, given.client_num, given.total_round_num, given.device) == \
        (0, 0, N, 2, "cuda:1")
    h.server = given
    _join_all(h)
    for r in range(2):                            # total_round_num 2 ends it, whatever the cfg says
        _answer_round(h, r, range(1, N + 1))
        _answer_eval(h, r + 1, range(1, N + 1))
    assert given.finished and given.round == 2 and h.asked(FINISH, 2) == [1, 2, 3, 4, 5]
    given.state = 7                               # FS's subclasses may set it
    assert given.round_state.round == 7
