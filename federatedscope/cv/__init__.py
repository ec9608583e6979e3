from federatedscope.cv.dataset import celeba, cifar10  # noqa: F401  (register their specs)
