"""FederatedScope-compatible FL with truly distributed data. The built-in domain packages (cv/,
nlp/) are registered the first time a registry is read (``federatedscope/register.py``)."""
from federatedscope import register  # noqa: F401
