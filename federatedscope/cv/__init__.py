"""The cv domain package: importing it registers its datasets and models with FS's registry."""
from federatedscope.cv.dataset import celeba, cifar10, femnist_spec  # noqa: F401
from federatedscope.cv.dataloader import dataloader  # noqa: F401
from federatedscope.cv.model import cnn  # noqa: F401
