from federatedscope import register  # noqa: F401
import federatedscope.cv  # noqa: F401
