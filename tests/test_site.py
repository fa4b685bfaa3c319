"""The docs site builds offline, passes mkdocs' strict link checks, and requests nothing from the network (see nbs/13_site.ipynb)."""
import base64, json, re, shutil
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
for m in ('mkdocs', 'material', 'pymdownx'):
    pytest.importorskip(m, reason="mkdocs-material is not installed (pip install -e '.[dev]')")

from induction_nb.site import build_site, check_site, page_problems, site_notebooks, page_name

PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=='
WIDGET_STATE = {'application/vnd.jupyter.widget-state+json': {'state': {'abc': {'model_name': 'HTMLModel', 'state': {}}},
                                                               'version_major': 2, 'version_minor': 0}}
NETWORK = re.compile(r'embed-amd|unpkg|cdn\.jsdelivr|cdnjs|https?://')

@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)   # settings.ini (page names, links) is found from the working directory

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The whole site, built once"
    return build_site(tmp_path_factory.mktemp('whole')/'site', nbs=ROOT/'nbs', quiet=True)

def _requests(html):
    "Everything a page loads (`src`, `href` of <link>) plus the text of its inline scripts and styles"
    srcs = re.findall(r'<(?:script|img|iframe|link|source|embed)\b[^>]*?\s(?:src|href)="([^"]*)"', html)
    return srcs + [m[1] for m in re.finditer(r'<(script|style)\b[^>]*>(.*?)</\1>', html, re.S)]

def test_whole_site(site):
    "Every notebook has a page with content; no repeated ids; nothing requested from the network, not even from inline JS."
    assert check_site(site, nbs=ROOT/'nbs') == []
    for nb in site_notebooks(ROOT/'nbs'):
        html = (site/page_name(nb)).read_text()
        article = re.sub(r'<[^>]+>', ' ', html.split('<article', 1)[1])
        assert len(article.split()) > 100, nb
        assert not [u for u in _requests(html) if NETWORK.search(u)], nb
        ids = re.findall(r'<[^>]*?\sid="([^"]+)"', html)
        assert len(ids) == len(set(ids)), (nb, sorted(i for i in ids if ids.count(i) > 1))

def test_widget_pages_are_offline(site):
    "The data and phase-change pages once loaded embed-amd.js from unpkg (tqdm widget state in the notebooks)."
    for page in ('data.html', 'phase_change.html'):
        html = (site/page).read_text()
        assert 'embed-amd' not in html and 'unpkg' not in html and 'widget-state' not in html, page

def test_search_works_from_file(site):
    "Search from file://: the index inlined as a script, the worker, and the vendored iframe-worker shim, loaded locally."
    assert (site/'search'/'search_index.js').read_text().startswith('var __index = {')
    assert list((site/'assets'/'javascripts'/'workers').glob('search.*.min.js'))
    shim = (site/'assets'/'javascripts'/'iframe-worker-shim.js').read_text()
    assert 'IFrameWorker' in shim and 'location.protocol==="file:"' in shim
    html = (site/'index.html').read_text()
    assert '<script src="assets/javascripts/iframe-worker-shim.js">' in html
    assert 'class="md-search"' in html

def test_printed_output_does_not_wrap(site):
    "index prints a table: output blocks keep their lines and scroll instead of wrapping mid-number."
    css = (site/'assets'/'stylesheets'/'induction_nb.css').read_text()
    rule = re.search(r'pre\.nb-output\s*\{([^}]*)\}', css)[1]
    assert 'white-space: pre' in rule and 'overflow-x: auto' in rule
    html = (site/'index.html').read_text()
    assert 'href="assets/stylesheets/induction_nb.css"' in html and '<pre class="nb-output">' in html

def _cell(src, kind='code', outputs=None):
    c = {'cell_type': kind, 'metadata': {}, 'source': src}
    if kind == 'code': c.update(execution_count=None, outputs=outputs or [])
    return c

def _nb(path, cells, **meta):
    path.write_text(json.dumps({'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}))

def test_directives(tmp_path):
    "Title and description, `#| hide`, `#| echo: false`, `#| include: false`, figures, math, links, widgets dropped."
    nbs = tmp_path/'nbs'
    (nbs/'img').mkdir(parents=True)
    (nbs/'img'/'dot.png').write_bytes(base64.b64decode(PNG))
    fig = [{'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': PNG, 'text/plain': ['<Figure>']}}]
    out1 = [{'output_type': 'stream', 'name': 'stdout', 'text': ['visible-output\n']}]
    bar = [{'output_type': 'display_data', 'metadata': {}, 'data': {'application/vnd.jupyter.widget-view+json': {'model_id': 'abc'},
                                                                    'text/plain': ['secret-progress-bar']}}]
    cells = [_cell('# First page\n\n> A description\n> over two lines.', 'markdown'),
             _cell('#| hide\nsecret_hidden_source = 1'),
             _cell('#| echo: false\nsecret_echo_source()', outputs=out1),
             _cell('#| include: false\nsecret_include_source()', outputs=out1),
             _cell('for x in tqdm(range(3)): pass', outputs=bar),
             _cell('## A section\n\nSee [the other page](02_other.ipynb#another-section) and ![dot](img/dot.png); $x^2$.', 'markdown'),
             _cell('plot()', outputs=fig)]
    _nb(nbs/'01_first.ipynb', cells, widgets=WIDGET_STATE)
    _nb(nbs/'02_other.ipynb', [_cell('# Other\n\n## Another section', 'markdown')])
    _nb(nbs/'index.ipynb', [_cell('# Home page\n\nSee [first](01_first.ipynb).', 'markdown')])
    out = build_site(tmp_path/'site', nbs=nbs, quiet=True)
    assert check_site(out, nbs) == []
    html = (out/'first.html').read_text()
    assert '<title>First page' in html and 'over two lines.' in html
    assert 'secret_hidden_source' not in html and 'secret_echo_source' not in html and 'secret_include_source' not in html
    assert html.count('visible-output') == 1
    assert 'src="data:image/png;base64,' in html and 'src="img/dot.png"' in html and 'href="other.html#another-section"' in html
    assert r'<span class="arithmatex">\(x^2\)</span>' in html and 'assets/mathjax/MathJax.js' in html
    assert 'secret-progress-bar' not in html and 'embed-amd' not in html and 'widget' not in html
    nav = (out/'index.html').read_text()
    assert nav.index('First page') < nav.index('Other')   # navigation in notebook order

def test_repeated_headings_get_unique_ids(tmp_path):
    "phase_change has `## Per-token-loss PCA` and `### Per-token-loss PCA`: each TOC entry must reach its own heading."
    nbs = tmp_path/'nbs'
    nbs.mkdir()
    _nb(nbs/'index.ipynb', [_cell('# Home\n\n## Same name\n\ntext', 'markdown'), _cell('### Same name\n\nmore', 'markdown')])
    out = build_site(tmp_path/'site', nbs=nbs, quiet=True)
    html = (out/'index.html').read_text()
    assert re.findall(r'<h[23] id="([^"]+)"', html) == ['same-name', 'same-name_1']
    toc = html.split('md-nav--secondary', 1)[1]
    assert 'href="#same-name"' in toc and 'href="#same-name_1"' in toc
    assert not page_problems(html)

def test_broken_links_fail_the_build(tmp_path):
    "mkdocs --strict with link validation: a link to a missing section or page stops the build and names it."
    nbs = tmp_path/'nbs'
    nbs.mkdir()
    _nb(nbs/'01_other.ipynb', [_cell('# Other\n\n## A section', 'markdown')])
    for link in ('01_other.ipynb#no-such-section', '02_missing.ipynb'):
        _nb(nbs/'index.ipynb', [_cell(f'# Home\n\nSee [there]({link}).', 'markdown')])
        with pytest.raises(RuntimeError, match=re.escape(link.replace('01_other.ipynb', 'other.md').replace('02_missing.ipynb', 'missing.md'))):
            build_site(tmp_path/'site', nbs=nbs, quiet=True)

def test_check_site_catches_network_and_duplicates(tmp_path):
    "check_site must fail on what it is there to catch, including URLs built in inline JavaScript."
    nbs = tmp_path/'nbs'
    nbs.mkdir()
    _nb(nbs/'index.ipynb', [_cell('# Home\n\n' + 'Enough words for a page. ' * 10, 'markdown')])
    out = build_site(tmp_path/'site', nbs=nbs, quiet=True)
    assert check_site(out, nbs) == []
    page = out/'index.html'
    good = page.read_text()
    for bad in ('<script src="https://unpkg.com/x.js"></script>', '<link rel="stylesheet" href="//cdn.jsdelivr.net/a.css">',
                '<script>var s = document.createElement("script"); s.src = "https://" + "cdn.example.org/embed-amd.js"</script>',
                '<script>require.config({paths: {"@jupyter-widgets/html-manager/dist/embed-amd": "x"}})</script>',
                '<h2 id="__search">again</h2>'):
        page.write_text(good.replace('</body>', bad + '</body>'))
        assert check_site(out, nbs), bad
    page.write_text(good.replace('<article', '<div hidden>', 1).split('<div hidden>')[0] + '</body></html>')
    assert check_site(out, nbs) != []   # an empty page

def test_refuses_to_empty_the_notebooks(tmp_path):
    with pytest.raises(ValueError, match='pick another'): build_site(ROOT/'nbs', nbs=ROOT/'nbs', quiet=True)

def test_in_a_browser(site):
    "Headless Chromium from file://: search finds pages, navigation works, no request leaves the machine."
    pw = pytest.importorskip('playwright.sync_api')
    exe = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
    if not exe: pytest.skip('no Chromium on this machine')
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=['--no-sandbox'])
        pg, reqs = b.new_page(), []
        pg.on('request', lambda r: reqs.append(r.url))
        pg.goto((site/'index.html').as_uri())
        pg.fill('input[data-md-component="search-query"]', 'corpus')
        pg.wait_for_selector('.md-search-result__item', timeout=15000)
        assert pg.locator('.md-search-result__item').count() > 0
        pg.goto((site/'index.html').as_uri())
        pg.click('nav.md-nav--primary a[href="data.html"]')
        pg.wait_for_load_state('load')
        assert pg.url.endswith('/data.html') and 'Data' in pg.title()
        ws = pg.evaluate("() => [...document.querySelectorAll('pre.nb-output')].map(e => getComputedStyle(e).whiteSpace)")
        b.close()
    assert ws and set(ws) == {'pre'}
    assert [u for u in reqs if not u.startswith(('file:', 'data:', 'about:', 'blob:'))] == []
