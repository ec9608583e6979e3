"""Real processes: a round whose every update is refused because the model diverged ends the job
with exit 5 saying so, at once, instead of pausing for re-joins that cannot help and exiting 3
after graceful_termination_timeout."""
from harness.jobs import Job
from harness.procs import wait_all


def test_a_diverged_round_exits_5_not_3(femnist_root, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=3,
              common=["train.optimizer.lr", "1e38", "grad.grad_clip", "0.0",
                      "federate.graceful_termination_timeout", "300"])
    server = job.server()
    clients = [job.client(k) for k in (1, 2, 3)]
    codes = wait_all([server] + clients, 200, expect=[5, 0, 0, 0])
    assert codes == [5, 0, 0, 0]
    log = job.server_log()
    assert "every update of round 1 was refused" in log and "the model diverged" in log
    assert "non-finite" in log and "waiting up to" not in log
