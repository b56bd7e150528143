"""Maps the root folders kernels/, server/ and client_web/ into the ltc_stream namespace.

Each of those folders keeps its package in `src/` and holds no `__init__.py` itself, so running
Python from the repository root (where `python -m ...` puts the working directory first on
sys.path) never shadows an installed top-level package of the same name: transformers imports
Hugging Face's `kernels` package, and a root `kernels/__init__.py` would be found first.
A folder without `__init__.py` is at most a namespace portion, which never wins over a regular
package found later on the path.

Everything else lives in pyproject.toml; this file only computes the package list, which a
static pyproject table cannot do for mapped folders with subpackages.
"""
from setuptools import find_packages, setup

ROOTS = {
    "ltc_stream": "ltc_stream",
    "ltc_stream.kernels": "kernels/src",
    "ltc_stream.server": "server/src",
    "ltc_stream.client_web": "client_web/src",
}

packages, package_dir = [], {}
for name, folder in ROOTS.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
