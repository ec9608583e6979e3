"""A user's script written the way FederatedScope's documentation drives FS (used by
tests/test_fs_user_script.py): build the config from ``global_cfg``, ``get_data``, then
``get_runner(...).run()``, with a client subclass that re-registers one handler and a server
subclass that overrides one callback, the two FS ways, each with FS's constructor signature."""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from federatedscope.core.auxiliaries.data_builder import get_data  # noqa: E402
from federatedscope.core.auxiliaries.outdir import update_logger  # noqa: E402
from federatedscope.core.auxiliaries.runner_builder import get_runner  # noqa: E402
from federatedscope.core.auxiliaries.utils import setup_seed  # noqa: E402
from federatedscope.core.auxiliaries.worker_builder import get_client_cls, get_server_cls  # noqa: E402
from federatedscope.core.cmd_args import parse_args  # noqa: E402
from federatedscope.core.configs.config import global_cfg  # noqa: E402

logger = logging.getLogger("federatedscope")


def with_evaluate_hook(base):
    class EvalHookClient(base):
        """FS's way to change one behaviour: register another callback for the message type."""

        def __init__(self, ID=-1, server_id=None, state=-1, config=None, data=None, model=None,
                     device='cpu', strategy=None, is_unseen_client=False, *args, **kwargs):
            # FS's signature, passed on positionally as FS's own clients do
            super().__init__(ID, server_id, state, config, data, model, device, strategy,
                             is_unseen_client, *args, **kwargs)
            self.register_handlers("evaluate", self.callback_for_evaluate_with_hook)

        def callback_for_evaluate_with_hook(self, message):
            logger.info(f"user hook: client {self.ID} evaluates round {message.state}")
            self.callback_funcs_for_evaluate(message)
    return EvalHookClient


def with_model_para_override(base):
    class CountingServer(base):
        """FS's other way: override the server's callback by its FS name, no registration."""

        def __init__(self, ID=-1, state=0, config=None, data=None, model=None, client_num=5,
                     total_round_num=10, device='cpu', strategy=None, **kwargs):
            super().__init__(ID, state, config, data, model, client_num, total_round_num, device,
                             strategy, **kwargs)
            logger.info(f"user server: {client_num} clients, {total_round_num} round(s)")

        def callback_funcs_model_para(self, message):
            logger.info(f"user server hook: model_para of client {message.sender} "
                        f"for round {self.state + 1}")
            super().callback_funcs_model_para(message)
    return CountingServer


if __name__ == "__main__":
    init_cfg = global_cfg.clone()
    args = parse_args()
    if args.cfg_file:
        init_cfg.merge_from_file(args.cfg_file)
    init_cfg.merge_from_list(args.opts)
    setup_seed(init_cfg.seed)
    update_logger(init_cfg)
    data, modified_cfg = get_data(config=init_cfg.clone())
    init_cfg.merge_from_other_cfg(modified_cfg)
    init_cfg.freeze()
    logger.info(f"user script: data is a {type(data).__name__}")
    runner = get_runner(data=data, server_class=with_model_para_override(get_server_cls(init_cfg)),
                        client_class=with_evaluate_hook(get_client_cls(init_cfg)),
                        config=init_cfg.clone())
    code = runner.run()
    # gRPC's C++ threads can race interpreter teardown (see federatedscope/main.py): leave hard.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)
