"""Installation guards: running from the repository root must not shadow installed packages.

`python -m ...` and `python -m pytest` put the working directory first on sys.path. A root folder
holding an `__init__.py` named like an installed package (`kernels`, which transformers imports)
would be imported in its place; the root folders keep their packages in `src/` for that reason.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("kernels", "server", "client_web")


def run_from_root(code: str) -> subprocess.CompletedProcess:
    # `-c` puts the working directory first on sys.path, as `python -m` does
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("folder", MAPPED)
def test_no_root_folder_is_an_importable_package(folder):
    assert (ROOT / folder / "src" / "__init__.py").is_file()
    assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow a package named {folder}"


def test_transformers_and_the_project_kernels_import_from_the_root():
    # the text encoder's code path (BERT, as the default model loads it) and the project's kernels
    code = (
        "import importlib.util, pathlib\n"
        "import transformers.models.bert.modeling_bert\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        "import ltc_stream.kernels, ltc_stream.server.app, ltc_stream.client_web\n"
        "root = pathlib.Path.cwd().resolve()\n"
        "assert pathlib.Path(ltc_stream.kernels.__file__).resolve() == root / 'kernels/src/__init__.py'\n"
        "for name in ('kernels', 'server', 'client_web'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    origin = spec and spec.origin and pathlib.Path(spec.origin).resolve()\n"
        "    assert not (origin and origin.is_relative_to(root)), (name, origin)\n"
        "print('ok')\n"
    )
    out = run_from_root(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_installed_kernels_package_wins_over_the_root_folder():
    # where Hugging Face's `kernels` is installed (transformers >= 5 pulls it in), it is what
    # `import kernels` gives, even from the root
    out = run_from_root("import importlib.util; s = importlib.util.find_spec('kernels'); print(s and s.origin)")
    assert out.returncode == 0, out.stderr
    origin = out.stdout.strip()
    if origin == "None":
        pytest.skip("Hugging Face's kernels package is not installed here")
    assert not Path(origin).resolve().is_relative_to(ROOT), origin
