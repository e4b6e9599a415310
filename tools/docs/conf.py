# Sphinx + MyST-NB settings of the llm_nb docs site: `python tools/build_docs.py` runs
# `sphinx-build -c tools/docs nbs build/docs/html`. tools/build_docs.py is also the extension that maps nbdev's cell
# directives onto MyST-NB's cell tags and adds the API entries (autodoc) of exported names.
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import build_docs
from nbdev.config import get_config

cfg = get_config(build_docs.ROOT)
project = html_title = cfg.lib_name
copyright = author = cfg.author
language = 'en'
extensions = ['myst_nb', 'sphinx.ext.autodoc', 'build_docs']
include_patterns = [p.name for p in build_docs.notebooks()]   # nbs/*.ipynb as nbdev finds them; nothing else in nbs/
root_doc = 'index'

nb_execution_mode = 'cache'                       # execute once, then reuse jupyter-cache's outputs
nb_execution_cache_path = str(build_docs.cache_dir())
nb_execution_in_temp = False                      # run in nbs/, as nbdev-test does
nb_execution_timeout = cfg.cell_timeout or -1     # per cell, as nbdev-test
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_render_markdown_format = 'myst'
myst_enable_extensions = ['dollarmath', 'attrs_block', 'deflist']
myst_heading_anchors = 4

autoclass_content = 'class'
add_module_names = False
default_role = 'py:obj'                           # `name` in a parameter comment (rST): a link where it names an object

html_theme = 'furo'
html_theme_options = {'navigation_with_keys': True}
html_static_path = ['_static']
html_css_files = ['llm_nb.css']
html_favicon = '_static/favicon.svg'              # else browsers ask for /favicon.ico and log a 404
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
suppress_warnings = ['myst.header', 'misc.highlighting_failure']
