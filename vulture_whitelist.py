"""Names vulture (``--min-confidence 60``) reports as unused that are used, each with why.

Checked by ``make lint`` (vulture federatedscope harness vulture_whitelist.py --min-confidence 60,
the generated protobuf/gRPC code ``*_pb2*.py`` excluded by path). Never imported:
vulture only reads it. A name that is truly dead is deleted, not listed here.
"""
# FS's public names (an FS user's script or package calls them; FS compatibility)
get_splitter  # FS's splitter builder (core/auxiliaries/splitter_builder.py); tests, doc/datasets.md
register_worker  # FS's registry function: a user package registers its Client/Server pair
register_scheduler  # FS's registry function: a user package registers an LR scheduler
register_optimizer  # FS's registry function: a user package registers an optimizer
register_aggregator  # FS's registry function: a user package registers an aggregator
_.__qualname__  # register.py: the FS name shown by repr/tracebacks of each register_* function
_.train_data  # FS's ClientData/loader properties (base_data.py, distributed_loader.py)
_.val_data  # FS's ClientData property
_.test_data  # FS's ClientData property
_.backend  # FS config key (cfg.backend), kept so FS configs merge
_.verbose  # FS config key (cfg.verbose), kept so FS configs merge
_.wandb  # FS config key group (cfg.wandb), kept so FS configs merge
# FS's handler callbacks: registered by name from Worker.default_handlers (getattr on the instance)
_.callback_funcs_for_assign_id  # Client
_.callback_funcs_for_refuse  # Client
_.callback_funcs_for_model_para  # Client
_.callback_funcs_for_evaluate  # Client
_.callback_funcs_for_finish  # Client
_.callback_funcs_for_heartbeat  # Server
_.callback_funcs_for_join_in  # Server
_.callback_funcs_for_redeclare  # Server
_.callback_funcs_model_para  # Server
_.callback_funcs_for_metrics  # Server
# FS's worker parameters, taken so FS subclasses pass theirs on; no role in this project's rounds
_._cfg  # Worker: FS's name for the config, read by FS subclasses (tests/test_fs_worker_subclasses.py)
is_unseen_client  # Client.__init__: FS's unseen-client evaluation; every client of a job trains
aggregated_num  # Server._start_new_training_round: FS's asynchronous rounds; a round here is synchronous

# Called by Python, torch or logging, not by our code
_.forward  # nn.Module.forward of ConvNet2 (cv/model/cnn.py) and the LSTM (nlp/model/rnn.py)
__getattr__  # shard_format/__init__.py: PEP 562 lazy re-export of DistributedShardLoader
_.handleError  # write_guard.py: logging.Handler's error hook, replaced to bound the error lines
record  # write_guard.py: handleError(record) is logging's signature
_._optimizer_step_pre_hooks  # optimizer.py: read by torch's LRScheduler wrapping our SGD
_._optimizer_step_post_hooks  # optimizer.py: read by torch's LRScheduler wrapping our SGD
closure  # optimizer.py: step(closure=None) is torch.optim.Optimizer's signature
exc  # harness __exit__(*exc): the context-manager protocol's signature

# Public helpers whose callers are tests, bench/ or scripts/ (outside the scanned tree)
raw_tensor_bytes  # codec.py: tests/test_codec.py, bench/wire.py
_.rejected  # transport counters (grpc_server.py, intake.py): tests/test_transport_hostile.py
_.evicted  # grpc_server.py counter: tests/test_transport_hostile.py
_.session_counts  # grpc_server.py: tests/test_transport_hostile.py
write_split  # shard_format/split_file.py: tests that build shards by hand
prepare_shards  # sharding.py: scripts/tools/prepare_shards.py, tests
write_leaf_json  # cv/dataset/leaf_json.py: scripts/tools/generate_*_sample.py, tests
_.server_log  # harness/jobs.py (the test/bench harness): tests/*
_.wait_round  # harness/jobs.py: tests/test_chaos.py, test_faults.py, ...
_.assert_eval_complete  # harness/jobs.py: tests/test_chaos.py, test_faults.py, ...
LIGHT_TRAINING  # harness/jobs.py: tests/test_faults.py, test_chaos.py, test_shard_refresh.py, test_algorithms_e2e.py
known_bug  # harness/jobs.py: tests/test_auth.py, test_faults.py
file_contains  # harness/procs.py: tests/*, bench/idle_cpu.py, bench/manifest_scale.py
free_port  # harness/procs.py: tests/*, bench/*
frozen  # harness/procs.py (SIGSTOP a process): tests/test_chaos.py, test_faults.py, ...
RawPeer  # harness/raw_peer.py (a hand-driven gRPC peer): tests/test_transport_*.py
_.send_chunked  # harness/raw_peer.py RawPeer: tests/test_transport_hostile.py
_.wait_closed  # harness/raw_peer.py RawPeer: tests/test_transport_*.py
_.closed  # harness/raw_peer.py RawPeer: tests/test_transport_hostile.py
health_status  # harness/raw_peer.py: tests/test_transport_*.py
SourceAddressProxy  # harness/raw_peer.py (peers seen from a second loopback address): tests/test_transport_hostile.py
bind_peer_then_client  # harness/raw_peer.py: tests/test_downlink_chunks.py, test_upload_chunks.py
pytest_runtest_protocol  # harness/memory_cap.py: a pytest hook (the plugin tests/conftest.py loads)
nextitem  # harness/memory_cap.py: pytest_runtest_protocol's signature
pytest_configure  # harness/memory_cap.py: a pytest hook
shards_from_manifest  # harness/swarm_manifest.py: bench/fullsize.py, tests/test_swarm_real_manifest.py
ForkServer  # harness/forkserver.py: set as procs.FORK_SERVER by tests/conftest.py
run_script  # harness/procs.py: tests/* (tools and one-shot scripts through the fork server)
_sink  # bench/scale.py: run by name in its loopback-throughput child (python -c)

# DatasetSpec contract fields (core/data/dataset_spec.py) every dataset spec sets
has_writers  # False = the data needs a splitter (CIFAR-10); read by tests/test_cifar10_reader.py
default_transform  # the dataset's FS default for an empty data.transform (not read yet: see report)
next_incoming  # harness/raw_peer.py: tests of the server transport read its inbox with it
