from federatedscope import register  # noqa: F401
import federatedscope.cv  # noqa: F401  (registers built-in datasets/models; nlp added later)
