from federatedscope import register  # noqa: F401
import federatedscope.cv  # noqa: F401  (registers the built-in image datasets and models)
import federatedscope.nlp  # noqa: F401  (registers Shakespeare, the LSTM and its trainer)
