"""The docs site builds offline and has no broken page (see nbs/13_site.ipynb)."""
import base64, json, os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
for m in ('mkdocs', 'material', 'mkdocs_jupyter'):
    pytest.importorskip(m, reason="the `site` extra is not installed (pip install -e '.[site]')")

from induction_nb.site import build_site, check_site, site_notebooks, page_name

PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=='

@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)   # settings.ini (page names, links) is found from the working directory

def test_whole_site(tmp_path):
    "Every notebook gets a page; no tracebacks, broken links or anchors, missing images, or network assets."
    out = build_site(tmp_path/'site', search=False, quiet=True)
    probs = check_site(out, nbs=ROOT/'nbs')
    assert not probs, 'broken site:\n' + '\n'.join(probs)
    for nb in site_notebooks(ROOT/'nbs'): assert (out/page_name(nb)).stat().st_size > 1000, nb

def _cell(src, kind='code', outputs=None):
    c = {'cell_type': kind, 'metadata': {}, 'source': src}
    if kind == 'code': c.update(execution_count=None, outputs=outputs or [])
    return c

def _nb(cells):
    return {'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'language': 'python', 'display_name': 'Python 3'}},
            'nbformat': 4, 'nbformat_minor': 5}

def test_directives(tmp_path):
    "Front matter, `#| hide`, `#| echo: false`, `#| include: false`, figures, and links between notebooks."
    nbs = tmp_path/'nbs'; (nbs/'img').mkdir(parents=True)
    (nbs/'img'/'dot.png').write_bytes(base64.b64decode(PNG))
    fig = [{'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': PNG, 'text/plain': ['<Figure>']}}]
    out1 = [{'output_type': 'stream', 'name': 'stdout', 'text': ['visible-output\n']}]
    cells = [_cell('# First page\n\n> A description\n> over two lines.', 'markdown'),
             _cell('#| hide\nsecret_hidden_source = 1'),
             _cell('#| echo: false\nsecret_echo_source()', outputs=out1),
             _cell('#| include: false\nsecret_include_source()', outputs=out1),
             _cell('## A section\n\nSee [the other page](02_other.ipynb#another-section) and ![dot](img/dot.png); $x^2$.', 'markdown'),
             _cell('plot()', outputs=fig)]
    (nbs/'01_first.ipynb').write_text(json.dumps(_nb(cells)))
    (nbs/'02_other.ipynb').write_text(json.dumps(_nb([_cell('# Other\n\n## Another section', 'markdown')])))
    (nbs/'index.ipynb').write_text(json.dumps(_nb([_cell('# Home page\n\nSee [first](01_first.ipynb).', 'markdown')])))
    out = build_site(tmp_path/'site', nbs=nbs, search=False, quiet=True)
    assert check_site(out, nbs) == []
    html = (out/'first.html').read_text()
    assert '<title>First page' in html and 'over two lines.' in html
    assert 'secret_hidden_source' not in html and 'secret_echo_source' not in html and 'secret_include_source' not in html
    assert html.count('visible-output') == 1
    assert 'src="data:image/png;base64,' in html and 'src="img/dot.png"' in html and 'href="other.html#another-section"' in html
    nav = (out/'index.html').read_text()
    assert nav.index('First page') < nav.index('Other')   # navigation in notebook order
    assert 'unpkg.com' not in html and 'cdnjs' not in html and 'fonts.googleapis' not in html
