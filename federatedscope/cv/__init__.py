from federatedscope.cv.dataset import femnist_spec  # noqa: F401  (registers 'femnist')
