"""FS's ``trainer.type: nlptrainer``. With samples already token-id tensors, FS's NLP trainer is
the general trainer (only its data handling differs in FS, and here that lives in the loader), so
it is registered as the general trainer class under FS's name."""
from federatedscope.core.trainers.trainer import GeneralTorchTrainer
from federatedscope.register import register_trainer


class NLPTrainer(GeneralTorchTrainer):
    pass


def call_nlp_trainer(trainer_type):
    if str(trainer_type).lower() == "nlptrainer":
        return NLPTrainer
    return None


register_trainer("nlptrainer", call_nlp_trainer)
