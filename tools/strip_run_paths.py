"""Committed result tables named the machine path of the run they came from (`run_dir` in `info.json`, issue 21):
rewrite each as the run's name under the runs folder, changing nothing else in the file.

    python tools/strip_run_paths.py [nbs/results]
"""
import json, re, sys
from pathlib import Path

def strip(path: Path) -> bool:
    "Rewrite the `run_dir` of the info.json at `path` as a bare name; True if the file changed."
    text = path.read_text()
    new = re.sub(r'("run_dir":\s*)"([^"]*)"', lambda m: m[1] + json.dumps(Path(m[2]).name), text)
    if new == text: return False
    a, b = json.loads(text), json.loads(new)
    assert {**a, 'run_dir': None} == {**b, 'run_dir': None} and b['run_dir'] == Path(a['run_dir']).name, path
    path.write_text(new)
    return True

if __name__ == '__main__':
    root = Path(sys.argv[1] if len(sys.argv) > 1 else 'nbs/results')
    changed = [p for p in sorted(root.rglob('info.json')) if strip(p)]
    print(f"{len(changed)} info.json file(s) rewritten under {root}")
