"""What pyproject.toml cannot say: the repository's conf/ ships inside the package as
genlab/conf (package_dir maps the package genlab.conf onto conf/), so that an installed genlab
composes from it (genlab.composition.CONF_DIR) while conf/ stays at the top of the checkout.
pyproject.toml's package finder cannot add a package mapped from outside src/, hence this."""

from setuptools import find_namespace_packages, setup

PACKAGES = find_namespace_packages(
    "src", include=["genlab*", "hydra_plugins*"], exclude=["*.__pycache__"]
)

setup(
    packages=[*PACKAGES, "genlab.conf"],
    package_dir={"": "src", "genlab.conf": "conf"},
    package_data={"genlab": ["py.typed"], "genlab.conf": ["*.yaml", "**/*.yaml"]},
)
