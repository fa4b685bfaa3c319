"""The package must be exactly what the notebooks export, and the notebooks must be clean.

Both checks run in a scratch copy, so they never touch the working tree."""
import shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    d = tmp_path_factory.mktemp('sync')
    for name in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(ROOT/name, d/name)
    shutil.copytree(ROOT/'nbs', d/'nbs', symlinks=True, ignore=shutil.ignore_patterns('.ipynb_checkpoints'))
    shutil.copytree(ROOT/'induction_nb', d/'induction_nb', ignore=shutil.ignore_patterns('__pycache__'))
    return d

def _snapshot(folder: Path, pattern: str) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob(pattern))
            if '.ipynb_checkpoints' not in p.parts and '__pycache__' not in p.parts}

def test_package_matches_notebooks(scratch):
    before = _snapshot(scratch/'induction_nb', '*.py')
    subprocess.run([str(BIN/'nbdev_export')], cwd=scratch, check=True, capture_output=True)
    after = _snapshot(scratch/'induction_nb', '*.py')
    changed = sorted(str(k) for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, (f"nbdev_export changes {changed}: the package was edited by hand or a notebook was not "
                         "exported. Edit the notebook, run nbdev_export, commit both.")

def test_notebooks_are_clean(scratch):
    before = _snapshot(scratch/'nbs', '*.ipynb')
    subprocess.run([str(BIN/'nbdev_clean')], cwd=scratch, check=True, capture_output=True)
    after = _snapshot(scratch/'nbs', '*.ipynb')
    changed = sorted(str(k) for k in before if before[k] != after.get(k))
    assert not changed, f"nbdev_clean changes {changed}: run nbdev_clean and commit."

def test_readme_matches_index():
    "README.md is generated from nbs/index.ipynb (`induction_nb.site.write_readme`); it must not drift."
    from induction_nb.site import readme_text
    want = readme_text(ROOT/'nbs'/'index.ipynb')
    assert (ROOT/'README.md').read_text() == want, (
        "README.md differs from what nbs/index.ipynb renders to. Edit the notebook, then run "
        "`python -c 'from induction_nb.site import write_readme; write_readme()'` and commit both.")

def test_readme_images_exist():
    import re
    refs = re.findall(r'!\[[^\]]*\]\(([^)\s]+)\)', (ROOT/'README.md').read_text())
    missing = [r for r in refs if not r.startswith('http') and not (ROOT/r).exists()]
    assert not missing, f"README.md shows images that do not exist: {missing}. Run write_readme()."
