"""What ``make mutation`` mutates, and against which tests: one ``Module`` per row of
``doc/mutation.md`` (its files, its fast in-process tests, the tests left out per mutant and why).

A new module gets a row here; ``scripts/tools/mutation_table.py`` runs them.
"""
from dataclasses import dataclass
from typing import Dict, Sequence


@dataclass(frozen=True)
class Module:
    globs: Sequence[str]            # mutmut only_mutate patterns (repository-relative)
    tests: Sequence[str]            # fast, in-process test files that exercise it
    deselect: str = ""              # pytest -k expression: tests too slow to rerun per mutant


FL = "federatedscope/core/"
# Left out of the per-mutant reruns: the codec's throughput tests (26 MB messages, seconds per
# mutant; a wrong byte count or dtype is caught by the cheap round trips) and its 3,000-frame
# fuzz loop; the config tests that start main.py or need a git checkout (the scratch copy is none).
CODEC_SLOW = "not bandwidth and not 2048 and not escapes"
FLOW_SLOW = (f"(test_upload_chunks or test_downlink_chunks or test_codec or simultaneous_uploads) "
             f"and {CODEC_SLOW}")
# Also the config-doc table checks (subprocesses, 16 s each) and the 4-client standalone run of
# test_data_roles (10 s; it reran for every default-value mutant): the alias reaching the
# trainer is pinned in-process by test_data_roles' alias tests, the defaults by
# test_config_checks' table comparison.
CONFIG_SLOW = ("not fails_the_process and not every_key_is_read and not config_doc "
               "and not standalone_run_over_the_local_transport")
# the 10,000-client manifest timing test: seconds per mutant, and it measures speed (every field
# check it runs is also run by the small malformed-manifest tests)
SHARD_SLOW = "not 10000_clients"
# the shard tool's tests that start processes (the CLI's exit codes and summary, the 2,000-writer
# size test: 10-50 s each), and the whole-tool runs at 1 and 3 reading workers (every plan and
# writer mutant reran them: the sharding run passed 35 min); the logic they reach runs
# in-process in the other tests (the parallel read on a toy spec)
SHARDING_SLOW = ("not bytes_per_sample and not cli_summary and not cli_exits_1 "
                 "and not generic_cli and not femnist_shards_are_the_same "
                 "and not cli_refuses_workers")
# the 17 s end-to-end accuracy run (every trainer mutant reran it: hours) and the config-doc
# table checks, which do not train; the algorithm tests check the same code to the float. Also
# test_optimizers' main.py run (a process, seconds per optimizer mutant): the message it reads is
# pinned in-process by the bad-optimizer table of the same file
TRAINER_SLOW = "not standalone_accuracy_improves and not config_doc and not fails_the_process"
# the 14 s standalone run (4 clients, 3 rounds, FEMNIST fixture): it reaches the transforms and
# dataset specs, so every such mutant would rerun it; the loader and transform tests pin the
# same code in-process, in well under a second. Of the tests that fork DataLoader workers only
# the 3-worker exactly-once epoch stays (it pins each worker's share of the blocks); the other
# worker runs repeat in-process checks through 1-3 forked workers, seconds per mutant
DATA_SLOW = ("not standalone_run_over_the_local_transport and not epoch[1] and not seeded[3] "
             "and not remainder[3] and not pinning_give_the_same_batches")
# the transport's derived limits: the in-process derivations only (the real-server tests of
# test_transport_ceilings take 10-20 s each; what they check of limits.py is its option values,
# pinned by the in-process tests), and the real client beating at the announced interval (6 s)
LIMITS_SLOW = ("not real_client and (not test_transport_ceilings or idle_connection_limit or "
               "keepalive_ack)")
# test_client_connect's tests that wait in real time (1.5-5 s each); the two that remain drive
# the same probe loop on a fake clock
GRPC_SLOW = "not probes_follow and not probe_steps_are_capped and not closing_ends_a_wait"
SESSION_SLOW = ("not refuse_intruders_and_run_the_job and not tls_problem_names "
                "and not test_admission_rules and not token_hash_in_manifest "
                "and not declaration_mismatches and not declared_sample_type")
MODULES: Dict[str, Module] = {
    "robust": Module([FL + "aggregators/robust.py"], ["tests/test_robust_math.py"]),
    # robust.py has its own row above. Not rerun per mutant: test_server_core.py and
    # test_server_schedule.py (~50 s for the tests that reach the base Aggregator: a surviving
    # mutant cost about a minute, the module hours); they drive the same sampling, cap and mean
    # through a whole server, and each rule they rely on is pinned by hand in
    # test_aggregator_units.py. They stay in the server module's list.
    "aggregators": Module([FL + "aggregators/aggregator.py", FL + "aggregators/fedavg.py",
                           FL + "aggregators/fedopt.py"],
                          ["tests/test_aggregator_units.py", "tests/test_robust_math.py",
                           "tests/test_server_strategy.py", "tests/test_fedopt_resume.py"]),
    # the server's own round logic
    "server": Module([FL + "workers/server.py", FL + "workers/server_state.py",
                      FL + "workers/server_eval.py", FL + "workers/server_liveness.py",
                      FL + "workers/server_store.py", FL + "workers/base_worker.py"],
                     ["tests/test_server_core.py", "tests/test_server_schedule.py",
                      "tests/test_server_outcomes.py", "tests/test_server_strategy.py",
                      "tests/test_server_recovery.py", "tests/test_server_rounds.py",
                      "tests/test_server_texts.py", "tests/test_server_records.py",
                      "tests/test_server_events.py", "tests/test_server_liveness_threshold.py",
                      "tests/test_server_fs_steps.py"]),
    # the join lines' storm budget, and the window both it and the transport's rejection lines use
    "join_lines": Module([FL + "workers/join_lines.py", FL + "auxiliaries/line_window.py"],
                         ["tests/test_join_lines.py", "tests/test_server_events.py",
                          "tests/test_stream_intake.py"]),
    # what the server accepts (joins, declarations, updates, metrics) and the client's side;
    # test_server_admission.py is left out: its session fixture runs the shard tool as
    # processes (seconds per mutant, and a fork server left behind by each killed mutant run);
    # the rules it checks are pinned in-process by the test_admission_*.py files
    "admission": Module([FL + "workers/admission.py", FL + "workers/client_table.py",
                         FL + "workers/validation.py", FL + "workers/cool_off.py",
                         FL + "workers/client.py"],
                        ["tests/test_admission_rules.py", "tests/test_admission_validation.py",
                         "tests/test_admission_members.py", "tests/test_admission_client.py",
                         "tests/test_abuse_cool_off.py", "tests/test_server_core.py",
                         "tests/test_server_outcomes.py", "tests/test_server_recovery.py",
                         "tests/test_server_fs_steps.py"]),
    "trainers": Module([FL + "trainers/*"],
                       ["tests/test_trainer_units.py", "tests/test_trainer_algorithm_units.py",
                        "tests/test_algorithms.py", "tests/test_trainer.py",
                        "tests/test_cfg_keys.py", "tests/test_optimizers.py",
                        "tests/test_model_mismatch.py"], TRAINER_SLOW),
    "shard_format": Module([FL + "data/shard_format/*"],
                           ["tests/test_shard_format.py", "tests/test_shard_format_properties.py",
                            "tests/test_shard_verify.py", "tests/test_split_file.py",
                            "tests/test_split_file_paths.py", "tests/test_shard_messages.py"],
                           SHARD_SLOW),
    # the offline shard tool
    "sharding": Module([FL + "data/sharding*.py"],
                       ["tests/test_sharding.py", "tests/test_sharding_safety.py",
                        "tests/test_shard_tool_guarantees.py", "tests/test_sharding_plan.py",
                        "tests/test_sharding_plot.py", "tests/test_sharding_writes.py",
                        "tests/test_sharding_rules.py", "tests/test_sharding_parallel.py",
                        "tests/test_sharding_units.py"],
                       SHARDING_SLOW),
    # the client's data: the shard loader, the dataset specs, transforms
    "data": Module([FL + "data/distributed_loader.py", FL + "data/streaming.py",
                    FL + "data/spec_data.py", FL + "data/base_data.py", FL + "data/transforms.py",
                    FL + "data/datasets.py", FL + "data/dataset_spec.py", FL + "data/utils.py"],
                   ["tests/test_distributed_loader.py", "tests/test_shard_verify.py",
                    "tests/test_transforms.py", "tests/test_batch_workers.py", "tests/test_data_roles.py",
                    "tests/test_data_partitions.py", "tests/test_loader_texts_and_links.py"],
                   DATA_SLOW),
    "codec": Module([FL + "communication/codec.py"],
                    ["tests/test_codec.py", "tests/test_codec_props.py"], CODEC_SLOW),
    # the inbox budget and chunked uploads; of the hostile-transport tests only the one that
    # drives the inbox budget with real uploads (the others take 1-9 s each per mutant)
    "flow": Module([FL + "communication/flow.py"],
                   ["tests/test_upload_chunks.py", "tests/test_codec.py",
                    "tests/test_transport_hostile.py", "tests/test_downlink_chunks.py"],
                   FLOW_SLOW),
    "limits": Module([FL + "communication/limits.py"],
                     ["tests/test_limits_derivation.py", "tests/test_heartbeat_allowance.py",
                      "tests/test_transport_ceilings.py", "tests/test_unjoined_streams.py"],
                     LIMITS_SLOW),
    # the server transport's reading half (framing, size limits, inbox slots, stall check, the
    # rejection-line budget) and its cross-thread calls, driven in-process on a fake clock; the
    # real-server tests that also reach it (test_transport_hostile, test_upload_chunks' gRPC
    # runs: seconds each per mutant) stay out
    "intake": Module([FL + "communication/intake.py"],
                     ["tests/test_stream_intake.py", "tests/test_loop_calls.py"]),
    # the gRPC transport around the intake: the server's streams (delivery by client id, the
    # join deadline, the caps on unjoined streams and on an address, large-write slots, stop)
    # and the client's connect, join, rejoin, upload, heartbeat and backoff. Not rerun per
    # mutant: the other real-server tests (test_transport_hostile, test_upload_chunks,
    # test_heartbeat_allowance): every mutant of the server's setup and stop reran all of them
    # (4 mutants a minute); what they check of these two files is pinned in
    # test_grpc_transport_units.py, and they stay in the flow and limits rows
    "grpc": Module([FL + "communication/grpc_server.py", FL + "communication/grpc_client.py",
                    FL + "communication/health.py"],
                   ["tests/test_grpc_transport_units.py", "tests/test_client_connect.py",
                    "tests/test_downlink_chunks.py"], GRPC_SLOW),
    # main.py's glibc tuning by role; not rerun per mutant: the test that starts main.py twice to
    # see it re-execute itself (seconds each); the environment it re-executes with is pinned
    # in-process by test_the_reexec_environment
    "malloc_tuning": Module([FL + "auxiliaries/malloc_tuning.py"], ["tests/test_main_malloc.py"],
                            "not reexecutes_itself"),
    # FEMNIST's LEAF reader (a domain package, but every shard of it passes through here). Its
    # own tests only: the shard tool's tests also parse LEAF files, but rerunning them for each
    # of ~1,000 reader mutants took 30-60 s a mutant; every rule of the reader has its own test
    # in these three files.
    "leaf": Module(["federatedscope/cv/dataset/leaf_femnist.py",
                    "federatedscope/cv/dataset/leaf_checks.py"],
                   ["tests/test_leaf_reader.py", "tests/test_leaf_checks.py",
                    "tests/test_leaf_inputs.py"]),
    # the per-run picture (curves.png) drawn from eval_results.log
    "curves": Module([FL + "monitors/curves.py"], ["tests/test_curves.py"]),
    # FS's data_idx partitioners (LDA, IID) and their builder
    "splitters": Module([FL + "splitters/*", FL + "auxiliaries/splitter_builder.py"],
                        ["tests/test_splitters.py", "tests/test_splitter_rules.py"]),
    # what a run writes: eval_results.log and its summaries, the outdir, the server checkpoint
    "monitor": Module([FL + "monitors/monitor.py", FL + "monitors/write_guard.py",
                       FL + "auxiliaries/outdir.py", FL + "auxiliaries/checkpoint.py"],
                      ["tests/test_monitor_units.py", "tests/test_monitor_fairness.py"]),
    # the datasets beyond FEMNIST's reader and the domain models and losses
    "datasets": Module(["federatedscope/cv/dataset/cifar10.py", "federatedscope/cv/dataset/celeba.py",
                        "federatedscope/cv/dataset/leaf_json.py",
                        "federatedscope/cv/dataset/femnist_spec.py", "federatedscope/cv/dataloader/*",
                        "federatedscope/cv/model/*", "federatedscope/nlp/*"],
                       ["tests/test_cifar10_reader.py", "tests/test_leaf_datasets.py",
                        "tests/test_nlp_models.py", "tests/test_dataset_units.py"],
                       # the Pillow-less import check starts a Python process (4 s per mutant);
                       # the message it reads is pinned in-process by test_dataset_units
                       "not imports_without_pillow"),
    # who may speak: the join proof, client tokens, unjoined streams, the message record
    # Not rerun per mutant: test_auth.py's whole-job TLS run (processes, ~18 s), its tls_problem
    # test (openssl subprocesses make the certificates) and its tests on the femnist_shards
    # fixture (the shard tool run as processes, seconds per mutant): test_session_units.py pins
    # the same rules in-process (real handshakes against embedded certificates, hand-built
    # manifest entries)
    "session": Module([FL + "communication/unjoined.py", FL + "communication/security.py",
                       FL + "communication/join_proof.py", FL + "auxiliaries/client_tokens.py",
                       FL + "message.py"],
                      ["tests/test_auth.py", "tests/test_unjoined_streams.py",
                       "tests/test_session_units.py"], SESSION_SLOW),
    # FS's registry and the builders that consult it. Not rerun per mutant: test_fs_seams' tests
    # on the session's FEMNIST sample and shards (its fixtures run the generator and the shard
    # tool as processes, 7 s per mutant run); test_builder_units pins the same get_data rules on
    # 4 shards written in-process
    "builders": Module(["federatedscope/register.py", FL + "auxiliaries/aggregator_builder.py",
                        FL + "auxiliaries/data_builder.py", FL + "auxiliaries/model_builder.py",
                        FL + "auxiliaries/worker_builder.py", FL + "auxiliaries/runner_builder.py",
                        FL + "auxiliaries/utils.py"],
                       ["tests/test_fs_seams.py", "tests/test_builder_units.py"],
                       "not (test_fs_seams and (get_data or shard or custom_message or "
                       "join_reports or failed_refresh))"),
    # how a job starts: main.py, the runner, the in-memory transport, the launcher's pre-flight.
    # Not rerun per mutant: test_data_roles' 4-client FEMNIST run (10 s, the sample generated
    # by a process) and test_launcher's tests but its in-process health-timeout one (each starts
    # the shard tool or the launcher as processes); test_runner_units.py runs the standalone
    # loop on a tiny model and the pre-flight on a shard set written in-process
    "runner": Module(["federatedscope/main.py", FL + "fed_runner.py", FL + "communication/local.py",
                      FL + "communication/transport.py", FL + "auxiliaries/launch_utils.py"],
                     ["tests/test_runner_units.py", "tests/test_data_roles.py",
                      "tests/test_launcher.py", "tests/test_client_cfg.py"],
                     "not standalone_run_over_the_local_transport and "
                     "(not test_launcher or health_timeout_scales)"),
    # the global config and the per-client sections (client_cfg.py, its own tests in
    # test_client_cfg.py: in-process, the 4-client standalone run included, 0.5 s); the open
    # optimizer nodes (cfg_fl_algo.optimizer_node: fedopt.optimizer's betas from YAML) are read
    # by test_optimizers.py (its main.py run left out by CONFIG_SLOW's fails_the_process)
    "configs": Module([FL + "configs/*", FL + "cmd_args.py"],
                      ["tests/test_config.py", "tests/test_config_precedence.py",
                       "tests/test_config_choices.py", "tests/test_cfg_keys.py",
                       "tests/test_data_roles.py", "tests/test_config_checks.py",
                       "tests/test_heartbeat_allowance.py", "tests/test_client_cfg.py",
                       "tests/test_optimizers.py"],
                      CONFIG_SLOW),
}
