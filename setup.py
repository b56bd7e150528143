"""Maps the root folders server/, kernels/ and client_web/ into the ltc_stream namespace.

Everything else lives in pyproject.toml; this file only computes the package list, which a
static pyproject table cannot do for mapped folders with subpackages.
"""
from setuptools import find_packages, setup

ROOTS = {
    "ltc_stream": "ltc_stream",
    "ltc_stream.kernels": "kernels",
    "ltc_stream.server": "server",
    "ltc_stream.client_web": "client_web",
}

packages, package_dir = [], {}
for name, folder in ROOTS.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
