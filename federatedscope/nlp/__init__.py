"""FS's NLP domain package: importing it registers Shakespeare's dataset spec, the ``lstm``
model, the ``character_loss`` criterion and the ``nlptrainer`` trainer."""
from federatedscope.nlp.dataset import shakespeare  # noqa: F401
from federatedscope.nlp.loss import character_loss  # noqa: F401
from federatedscope.nlp.model import model_builder  # noqa: F401
from federatedscope.nlp.trainer import trainer  # noqa: F401
