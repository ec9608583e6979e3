from federatedscope.core.splitters.generic.iid_splitter import IIDSplitter
from federatedscope.core.splitters.generic.lda_splitter import LDASplitter

__all__ = ["IIDSplitter", "LDASplitter"]
