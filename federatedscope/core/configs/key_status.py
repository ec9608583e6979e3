"""Keys of ``get_default_cfg()`` that are accepted and deliberately not acted on, with why.

Together with ``config._NOT_IMPLEMENTED`` (refused when set) this is the one home of every key's
status; every other key is implemented. ``tests/test_config.py`` audits the three-way split and
``scripts/tools/config_table.py`` renders it into doc/config.md.
"""

_SIMPLE_TUNING = ("FS reads it only inside simple-tuning (finetune.simple_tuning True), which is "
                  "refused here; with simple-tuning off FS ignores it too")
_PFEDME = ("FS reads it only in pFedMe's trainer (federate.method pFedMe), which is refused here; "
           "under every other method FS ignores it too")
_GRAPH = ("only FS's graph samplers read it; they need a graph data.type, which no loader here "
          "registers (the registry refuses one), and dataloader.type other than 'base' is refused")

# key -> why a value other than the default needs no code here.
ACCEPTED_UNUSED = {
    "distribute.client_host": "clients only dial out; FS's client configs set it",
    "distribute.client_port": "clients only dial out; FS's client configs set it",
    "federate.data_weighted_aggr": "FedAvg weights are always the declared train count here, "
                                   "which is what either FS setting amounts to in this project",
    "personalization.share_non_trainable_para": "FS's own parameter filter shares non-trainable "
                                                "state (BN statistics) whatever this says; here "
                                                "it is always shared too (doc/algorithms.md)",
    "federate.use_diff": "FS's clients then upload model deltas; here the server combines the "
                         "same updates (FedAvg's weighted mean equals the global model plus the "
                         "mean delta; the robust rules already work on deltas), so either FS "
                         "setting gives the same aggregate up to float rounding",
    "dataloader.theta": "only FS's matrix-factorisation loaders read it (their DP sampling); "
                        "they need an MF data.type, which no loader here registers (the "
                        "registry refuses one)",
    "dataloader.walk_length": _GRAPH,
    "dataloader.num_steps": _GRAPH,
    "dataloader.sizes": _GRAPH,
    "finetune.epoch_linear": _SIMPLE_TUNING,
    "finetune.lr_linear": _SIMPLE_TUNING,
    "finetune.weight_decay": _SIMPLE_TUNING,
    "finetune.local_param": _SIMPLE_TUNING,
    "personalization.K": _PFEDME,
    "personalization.beta": _PFEDME,
}
