from setuptools import find_packages, setup

setup(
    name="federatedscope",
    version="0.1.0",
    description="FederatedScope-compatible FL with truly distributed data",
    packages=find_packages(include=["federatedscope", "federatedscope.*"]),
    python_requires=">=3.9",
)
