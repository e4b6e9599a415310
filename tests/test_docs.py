"""The docs site: `tools/build_docs.py` builds it with Sphinx + MyST-NB from the notebooks, and a real headless Chromium reads it.

Every notebook page must load without console errors and show its title and at least one code cell with its
output; the loop page shows the loss plot as a loaded image; search finds the DPO page (the checkpointing page
until `nbs/07_dpo.ipynb` exists); no nbdev/Quarto-only markup leaks into a page. The Quarto configuration that
`nbdev-docs` uses is checked too. Chromium is Debian's `chromium` (installed by `.ci/run`); without it these
tests fail, unless `LLM_NB_SKIP_BROWSER=1` skips the browser part.
"""
import importlib, json, os, re, shutil, subprocess, sys, tempfile, threading, time, urllib.parse, urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT/'tools'))
bd = importlib.import_module('build_docs')

SKIP_BROWSER = os.environ.get('LLM_NB_SKIP_BROWSER') == '1'
# The only third-party host a page may load from (Sphinx's default MathJax, for pages with math). Offline, its
# load fails; that is the machine's network, not a page error. Any other failed load or console error fails.
EXTERNAL_OK = {'cdn.jsdelivr.net'}

# ---------------------------------------------------------------- Quarto (nbdev-docs) configuration: no build needed

def test_sections():
    "Notebooks land in their subsystem by number prefix; an unknown prefix still gets a page."
    assert bd.section_of('index') is None
    assert bd.section_of('00_config') == 'Configuration'
    assert bd.section_of('06_lora') == 'Models' and bd.section_of('06a_sft') == 'Fine-tuning and alignment'
    assert bd.section_of('05a_techniques') == 'Training loop'      # '05a' is not listed: falls back to '05'
    assert bd.section_of('42_new') == bd.MORE and bd.section_of('scratch') == bd.MORE
    g = bd.grouped(['07_dpo', '00_config', '42_new', '02_data', '01_tokenisation'])
    assert g == [('Configuration', ['00_config']), ('Data', ['01_tokenisation', '02_data']),
                 ('Fine-tuning and alignment', ['07_dpo']), (bd.MORE, ['42_new'])]

def test_quarto_config():
    "`_quarto.yml`, `nbdev.yml` and `sidebar.yml` are what `nbdev-docs` needs, and the sidebar lists every notebook."
    from nbdev.config import get_config
    from nbdev.quarto import _nbdev_yml
    cfg, nbs = get_config(ROOT), ROOT/'nbs'
    q = yaml.safe_load((nbs/'_quarto.yml').read_text())
    assert q['project']['type'] == 'website'
    for f in q['metadata-files']: assert (nbs/f).exists(), f'_quarto.yml names {f}, which is missing from nbs/'
    assert (nbs/q['format']['html']['css']).exists()
    # nbdev-docs rewrites nbdev.yml from pyproject.toml: the committed one must be that text
    vals = {k: cfg[k] for k in ['title', 'description', 'branch', 'git_url', 'doc_host', 'doc_baseurl']}
    vals['doc_path'] = cfg.doc_path.name
    assert (nbs/'nbdev.yml').read_text() == _nbdev_yml.format(**vals), 'nbs/nbdev.yml differs from what nbdev-docs writes'
    # ... and it rewrites sidebar.yml as a flat list unless custom_sidebar is set
    assert str(cfg.custom_sidebar).lower() == 'true', 'set custom_sidebar = true in [tool.nbdev] of pyproject.toml, or nbdev-docs overwrites nbs/sidebar.yml'
    side = (nbs/'sidebar.yml').read_text()
    assert side == bd.sidebar_yml(), 'nbs/sidebar.yml is out of date: run python tools/build_docs.py --sidebar'
    contents = yaml.safe_load(side)['website']['sidebar']['contents']
    listed = [c for c in contents if isinstance(c, str)] + [n for c in contents if isinstance(c, dict) for n in c['contents']]
    assert sorted(listed) == sorted(p.name for p in bd.notebooks())

# ---------------------------------------------------------------- nbdev directives as MyST-NB cell tags

def test_cell_mapping(tmp_path):
    "Each nbdev directive means on the page what it means to nbdev: hidden, shown, not run (the cells nbdev-test skips), API entries."
    def code(src, **meta): return {'cell_type': 'code', 'metadata': meta, 'source': src, 'outputs': [], 'execution_count': None}
    def md(src): return {'cell_type': 'markdown', 'metadata': {}, 'source': src}
    nb = {'nbformat': 4, 'nbformat_minor': 5, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}},
          'cells': [md('# Loop\n> The `Learner`.'), code('#| default_exp loop'), code('#| hide\nfrom fastcore.test import *'),
                    code('#| export\ndef fit(n:int): "Fit."\nclass Learner: pass\ndef _private(): pass'),
                    code('#| exports\n@patch\ndef step(self:Learner): pass'),
                    code('#| export\nclass Shown: pass'), code('show_doc(Shown)'),
                    code('#| eval: false\nboom()'), code('#| slow\nlong_run()'), code('#| echo: false\nprint(1)'),
                    code('#| output: false\nnoisy()'), code('#| include: false\nsecret()'), code('quiet()', nbdev={'hide': 'true'}),
                    code('#| hide\nimport nbdev; nbdev.nbdev_export()'), md('Prose.'), code('x = 1')]}
    shutil.copy(ROOT/'pyproject.toml', tmp_path)           # the project's nbdev settings: lib_name, tst_flags
    p = tmp_path/'05_loop.ipynb'; p.write_text(json.dumps(nb))
    out = bd.myst_notebook(p.read_text(), p, toc=[('Data', ['01_tokenisation', '02_data'])])['cells']
    src = [c['source'] for c in out]
    tags = {c['source']: c['metadata'].get('tags', []) for c in out if c['cell_type'] == 'code'}
    assert src[0] == '# Loop\n\n{.lead}\nThe `Learner`.' and not any('> The' in s for s in src)      # nbdev frontmatter -> title, lead
    assert not any('#|' in s or 'show_doc' in s for s in src)                                         # no directive is shown
    assert tags['from fastcore.test import *'] == ['remove-cell']                                     # hidden, but runs (tests)
    assert tags['def fit(n:int): "Fit."\nclass Learner: pass\ndef _private(): pass'] == []             # exported code: shown, runs
    i = src.index('def fit(n:int): "Fit."\nclass Learner: pass\ndef _private(): pass')
    assert src[i+1] == '```{nbdev-api}\n.. autofunction:: llm_nb.loop.fit\n\n.. autoclass:: llm_nb.loop.Learner\n```'   # public names only
    assert '```{nbdev-api}\n.. automethod:: llm_nb.loop.Learner.step\n```' in src                        # @patch: Class.method
    shown = '```{nbdev-api}\n.. autoclass:: llm_nb.loop.Shown\n```'                                   # show_doc(Shown): there, once
    assert src.count(shown) == 1 and src.index('class Shown: pass') + 1 == src.index(shown)
    assert tags['boom()'] == ['skip-execution'] and tags['long_run()'] == ['skip-execution']          # eval: false; tst_flags
    assert tags['print(1)'] == ['remove-input'] and tags['noisy()'] == ['remove-output']
    assert tags['secret()'] == ['remove-cell'] and tags['quiet()'] == ['remove-cell']                  # metadata directives too
    assert tags['import nbdev; nbdev.nbdev_export()'] == ['remove-cell', 'skip-execution']
    assert tags['x = 1'] == [] and 'Prose.' in src
    assert src[-1] == '```{toctree}\n:hidden:\n:caption: Data\n\n01_tokenisation\n02_data\n```'
    assert bd.api_names(p) == ['llm_nb.loop.fit', 'llm_nb.loop.Learner', 'llm_nb.loop.Learner.step', 'llm_nb.loop.Shown']
    # the cells that run are exactly those nbdev-test runs
    from nbdev.test import nb_test_cells
    ran = {c.source.split('\n')[-1] for c in nb_test_cells(p, skip_flags=['notest', 'slow', 'gpu'])} - {'#| default_exp loop', 'show_doc(Shown)'}
    assert {s.split('\n')[-1] for s, t in tags.items() if s and 'skip-execution' not in t} == ran

# ---------------------------------------------------------------- the built site

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    for mod in ('sphinx', 'myst_nb', 'furo'):
        if importlib.util.find_spec(mod) is None: pytest.fail(f'{mod} is not installed: pip install -e ".[dev]"')
    out = tmp_path_factory.mktemp('site')/'_docs'
    t = time.time()
    bd.build(out, workers=2)
    print(f'docs built in {time.time()-t:.0f}s')
    return out, bd.pages()

LEAKS = ('#|', ':::', '{.callout', '{target=', 'output-file:', '<!-- WARNING', 'show_doc(')   # nbdev/Quarto-only markup

def test_site_files(site):
    """Every notebook has a page with its title and an API entry for each exported name; the search index knows every page;
    links between notebooks are links between pages, to anchors that exist; a backticked name in prose links to its API
    entry; outputs read as a terminal shows them (no ANSI codes, no `\r`-redrawn progress bars); no nbdev/Quarto markup."""
    out, pages = site
    assert sorted(v['notebook'] for v in pages.values()) == sorted(p.name for p in bd.notebooks())
    api_links = 0
    for page, info in pages.items():
        html = (out/f'{page}.html').read_text()
        h1 = re.search(r'<h1>(.*?)<a class="headerlink"', html, re.S)
        assert h1 and _text(h1[1]).strip() == info['title'].replace('`', ''), (page, h1 and h1[1])
        art = _article(html)
        for bad in LEAKS:
            assert bad not in _text(art), f'{page}.html shows nbdev/Quarto markup {bad!r}'
        for name in bd.api_names(ROOT/'nbs'/info['notebook']):
            assert f'id="{name}"' in art, f'{page}.html has no API entry for {name} (see build/docs/sphinx-warnings.txt)'
        assert not re.search(r'href="[^"]*\.ipynb', art), f'{page}.html links to a notebook file, not its page'
        for target, anchor in re.findall(r'href="([\w.-]*\.html)?#([^"]+)"', art):
            assert f'id="{anchor}"' in ((out/target).read_text() if target else html), f'{page}.html links to a missing {target}#{anchor}'
        assert '\x1b[' not in html and '\r' not in _text(art), f'{page}.html shows terminal control characters'
        api_links += len(re.findall(r'<a class="reference internal" href="[^"]*#llm_nb\.[^"]*"[^>]*><code', art))
    assert api_links, 'no backticked name in prose links to its API entry'
    assert (out/'searchindex.js').exists() and (out/'search.html').exists()

def _text(html): return re.sub(r'<[^>]+>', '', html).replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>')

def _article(html):
    "The page's article (what a reader sees), without scripts and styles; comments kept."
    m = re.search(r'<article[^>]*>(.*)</article>', html, re.S)
    return re.sub(r'<(script|style)\b.*?</\1>', '', m[1] if m else html, flags=re.S)

# ---------------------------------------------------------------- headless Chromium over the DevTools protocol

def _chromium():
    for name in (os.environ.get('CHROMIUM'), 'chromium', 'chromium-browser', 'google-chrome'):
        if name and shutil.which(name): return shutil.which(name)

class Browser:
    "Just enough of the Chrome DevTools protocol: navigate, evaluate JavaScript, collect console errors."
    def __init__(self, exe):
        import websocket
        self.prof = tempfile.mkdtemp(prefix='llm_nb-chromium-')
        self.proc = subprocess.Popen([exe, '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
                                      '--no-default-browser-check', '--disable-extensions', '--remote-debugging-port=0',
                                      f'--user-data-dir={self.prof}', '--window-size=1280,1000', 'about:blank'],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, t = Path(self.prof)/'DevToolsActivePort', time.time()
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.time()-t > 60: raise RuntimeError(f'{exe} did not start (exit {self.proc.poll()})')
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        for _ in range(100):
            targets = json.loads(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=10).read())
            pages = [t for t in targets if t['type'] == 'page']
            if pages: break
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]['webSocketDebuggerUrl'], timeout=60, suppress_origin=True)
        self.n, self.events, self.offline = 0, [], []
        for m in ('Page.enable', 'Runtime.enable', 'Log.enable'): self.send(m)

    def send(self, method, **params):
        self.n += 1; i = self.n
        self.ws.send(json.dumps({'id': i, 'method': method, 'params': params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == i:
                if 'error' in msg: raise RuntimeError(f'{method}: {msg["error"]}')
                return msg.get('result', {})
            if 'method' in msg: self.events.append(msg)

    def js(self, expr):
        r = self.send('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True)
        if 'exceptionDetails' in r: raise RuntimeError(f'{expr}: {r["exceptionDetails"]}')
        return r['result'].get('value')

    def goto(self, url, settle=0.5):
        "Load `url`; return the console errors, uncaught exceptions and failed loads it caused."
        self.events = []
        self.send('Page.navigate', url=url)
        t = time.time()
        while not any(e['method'] == 'Page.loadEventFired' for e in self.events):
            if time.time()-t > 60: raise TimeoutError(f'{url} did not load in 60 s')
            self.ws.settimeout(max(0.1, 60-(time.time()-t)))
            msg = json.loads(self.ws.recv())
            if 'method' in msg: self.events.append(msg)
        self.ws.settimeout(60)
        time.sleep(settle); self.js('1')     # let late scripts run; their events arrive with this reply
        return self.errors()

    def errors(self):
        "Console errors; a third-party resource that the offline test machine cannot reach is not the page's error."
        out, offline = [], ('net::ERR_NAME_NOT_RESOLVED', 'net::ERR_INTERNET_DISCONNECTED', 'net::ERR_CONNECTION_REFUSED',
                            'net::ERR_ADDRESS_UNREACHABLE', 'net::ERR_NETWORK_ACCESS_DENIED', 'net::ERR_PROXY_CONNECTION_FAILED')
        for e in self.events:
            p = e.get('params', {})
            if e['method'] == 'Log.entryAdded' and any(o in p['entry']['text'] for o in offline) \
               and urllib.parse.urlsplit(p['entry'].get('url', '')).hostname in EXTERNAL_OK:
                self.offline.append(p['entry']['url']); continue
            if e['method'] == 'Runtime.exceptionThrown':
                d = p['exceptionDetails']; out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif e['method'] == 'Runtime.consoleAPICalled' and p.get('type') in ('error', 'assert'):
                out.append('console.error: ' + ' '.join(str(a.get('value', a.get('description'))) for a in p.get('args', [])))
            elif e['method'] == 'Log.entryAdded' and p['entry']['level'] == 'error':
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    def close(self):
        try: self.ws.close()
        except Exception: pass
        self.proc.terminate()
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill()
        shutil.rmtree(self.prof, ignore_errors=True)

class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

@pytest.fixture(scope='module')
def browser(site):
    if SKIP_BROWSER: pytest.skip('LLM_NB_SKIP_BROWSER=1')
    exe = _chromium()
    if exe is None: pytest.fail('Chromium not found: apt-get install -y chromium (as .ci/run does), or set LLM_NB_SKIP_BROWSER=1')
    out, pages = site
    srv = ThreadingHTTPServer(('127.0.0.1', 0), partial(_Quiet, directory=str(out)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    b = Browser(exe)
    b.base = f'http://127.0.0.1:{srv.server_address[1]}/'
    yield b
    b.close(); srv.shutdown(); srv.server_close()

PAGE_JS = r'''(() => {
  const h1 = document.querySelector('article h1'); let title = null;
  if (h1) { const c = h1.cloneNode(true); c.querySelectorAll('a.headerlink').forEach(a => a.remove()); title = c.textContent.trim(); }
  const cells = [...document.querySelectorAll('div.cell')].map(c => {
    const inp = c.querySelector('div.cell_input pre'), out = c.querySelector('div.cell_output');
    const imgs = out ? [...out.querySelectorAll('img')].map(i => ({ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight})) : [];
    return {code: inp ? inp.innerText : '', output: out ? out.innerText.trim() : '', imgs};
  });
  const nav = [...document.querySelectorAll('.sidebar-tree p.caption')].map(p => p.innerText.trim());
  const links = [...document.querySelectorAll('.sidebar-tree a.reference')].map(a => a.getAttribute('href'));
  return {title, cells, nav, links, text: document.querySelector('article').innerText};
})()'''

def test_pages_in_browser(site, browser):
    "Every page: no console error, its title, a code cell with its output, no nbdev markup, the full sidebar."
    out, pages = site
    problems = []
    for page, info in pages.items():
        errs = browser.goto(browser.base + f'{page}.html')
        r = browser.js(PAGE_JS)
        if errs: problems.append(f'{page}.html: console errors {errs}')
        if r['title'] != info['title'].replace('`', ''): problems.append(f'{page}.html: title {r["title"]!r}, expected {info["title"]!r}')
        shown = [c for c in r['cells'] if c['code'].strip() and (c['output'] or any(i['ok'] for i in c['imgs']))]
        if not shown: problems.append(f'{page}.html ({info["notebook"]}): no code cell with an output')
        for c in r['cells']:
            if re.search(r'^\s*#\||^show_doc\(', c['code'], re.M): problems.append(f'{page}.html: a code block shows a #| directive: {c["code"][:80]!r}')
            broken = [i for i in c['imgs'] if not i['ok']]
            if broken: problems.append(f'{page}.html: an output image did not load ({c["code"][:60]!r})')
        for bad in LEAKS:
            if bad in r['text']: problems.append(f'{page}.html shows nbdev/Quarto markup {bad!r}')
        want_nav = [t.upper() for t, _ in bd.grouped([p['notebook'][:-6] for p in pages.values()])]
        if [n.upper() for n in r['nav']] != want_nav: problems.append(f'{page}.html: sidebar sections {r["nav"]}, expected {want_nav}')
        missing = {f'{p}.html' for p in pages if p not in ('index', page)} - {l.split('#')[0] for l in r['links']}
        if missing: problems.append(f'{page}.html: sidebar lacks {sorted(missing)}')
    assert not problems, '\n'.join(problems)

def test_loss_plot(site, browser):
    "The loop page shows `plot_history`'s loss plot as a loaded image."
    out, pages = site
    page = next(p for p, v in pages.items() if v['notebook'] == '05_loop.ipynb')
    assert browser.goto(browser.base + f'{page}.html') == []
    cells = browser.js(PAGE_JS)['cells']
    plots = [c for c in cells if 'plot_history' in c['code'] and c['imgs']]
    assert plots, f'no cell calling plot_history shows an image on {page}.html'
    assert all(i['ok'] and i['w'] >= 200 and i['h'] >= 100 for c in plots for i in c['imgs']), plots

def _search(browser, term):
    errs = browser.goto(browser.base + f'search.html?q={term}')
    for _ in range(300):     # Sphinx's search runs after load; it writes a summary when done
        if browser.js("(document.querySelector('#search-results .search-summary')||{}).innerText || ''"): break
        time.sleep(0.1)
    hrefs = browser.js("[...document.querySelectorAll('#search-results ul.search li a')].map(a => a.getAttribute('href'))")
    return errs, [h.split('?')[0].split('#')[0] for h in hrefs]

def test_search(site, browser):
    "Full-text search works in the browser: 'DPO' finds the DPO page (until it exists, 'checkpoint' finds checkpointing)."
    out, pages = site
    by_nb = {v['notebook']: p for p, v in pages.items()}
    cases = [('checkpoint', '09_checkpointing.ipynb')] + ([('DPO', '07_dpo.ipynb')] if (ROOT/'nbs'/'07_dpo.ipynb').exists() else [])
    for term, nb in cases:
        if nb not in by_nb: pytest.fail(f'{nb} has no page')
        errs, hits = _search(browser, term)
        assert errs == [], errs
        assert f'{by_nb[nb]}.html' in hits, f'search for {term!r} found {hits}, not {by_nb[nb]}.html'
    errs, hits = _search(browser, 'zzqxjvnotaword')
    assert errs == [] and hits == []
