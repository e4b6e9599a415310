"Samplers (nbs/04_samplers.ipynb): curricula, dynamic weights, domain quotas, quality weighting, resume and ranks."
import json, math
import numpy as np, pytest, torch, datasets
from transformers import GPT2Config, GPT2LMHeadModel
from llm_nb.config import ConfigError, DataConfig, SamplingConfig, load_config
from llm_nb.data import DataError, lm_dataloader
from llm_nb.store import Blocks, TokenStore, lm_datasets, write_store
from llm_nb.samplers import (CurriculumSchedule, DynamicCurriculumCB, DynamicCurriculumTracker, LengthCurriculumCB, TrainSampler,
                             block_fields, check_sampling, curriculum_length, domain_quotas, quality_weights, shard, train_sampler)
from llm_nb.loop import Learner
from llm_nb.tasks import LMTask
from llm_nb.checkpoint import save_checkpoint, load_checkpoint

# ---------------------------------------------------------------- per-block metadata (02a_store)
def test_block_meta_matches_per_token_reference(tmp_path):
    "Packed blocks' metadata is the mean over their tokens of their documents' values (reference: expand per token)."
    def make_blocks_meta(docs, T, eos, packing=True, doc_meta=None):
        rows = [(i + 1, d, 0, {'q': doc_meta['q'][i]}) for i, d in enumerate(docs)]
        st = TokenStore(write_store(tmp_path/f's{checked}-{packing}', rows, 64, eos, fields=['q']))
        return Blocks(st, np.arange(len(docs)), T, packing, meta_fields=['q'])
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        docs = [list(range(1, rng.integers(1, 30))) for _ in range(rng.integers(1, 20))]
        q, T = rng.random(len(docs)), int(rng.integers(1, 12))
        lens = np.array([len(d) + 1 for d in docs])
        if lens.sum() < T: continue
        b = make_blocks_meta(docs, T, 0, doc_meta={'q': list(q)})
        n = len(b)
        np.testing.assert_allclose(b.meta['q'], np.repeat(q, lens)[:n * T].reshape(n, T).mean(1))
        np.testing.assert_allclose(b.meta['length'], np.repeat(lens, lens)[:n * T].reshape(n, T).mean(1))
        u = make_blocks_meta(docs, T, 0, packing=False, doc_meta={'q': list(q)})
        np.testing.assert_allclose(u.meta['q'], np.repeat(q, -(-lens // T)))    # unpacked: each chunk keeps its document's value
        checked += 1
    assert checked > 20

# ---------------------------------------------------------------- curriculum
def test_curriculum_pool_sizes_and_easiest_first():
    rng = np.random.default_rng(0)
    diff = rng.permutation(100).astype(float)          # block i has difficulty diff[i]
    s = TrainSampler(100, 5, seed=3, curriculum=CurriculumSchedule(diff, start_fraction=0.7, full_epoch=3))
    sizes = []
    for e in range(5):
        s.set_epoch(e)
        seen = list(s)
        sizes.append(len(seen))
        assert len(set(seen)) == len(seen)                          # a permutation of the pool: each block once
        assert max(diff[seen]) == len(seen) - 1                     # exactly the easiest len(seen) blocks
    assert sizes == [70, 80, 90, 100, 100]                         # 0.7 → 1.0 linearly by epoch 3
    assert [s.epoch_len(e) for e in range(5)] == sizes
    s.set_epoch(0); a = list(s); s.set_epoch(0); assert list(s) == a   # deterministic
    assert a != sorted(a, key=lambda i: diff[i])                    # shuffled inside the pool, not sorted

def test_curriculum_length_strategy_from_documents():
    "The `length` strategy ranks blocks by the (token-weighted) length of their documents: short documents first."
    from llm_nb.tokenisation import train_tokenizer
    texts = [('word ' * (10 * (i + 1))).strip() for i in range(12)]
    tok = train_tokenizer(texts, 300)
    blocks = lm_datasets(datasets.DatasetDict(train=datasets.Dataset.from_dict(dict(text=texts))), tok, 8, packing=False)['train']
    sampler, _ = train_sampler(SamplingConfig(use_curriculum=True, curriculum_start_fraction=0.25), DataConfig(packing=False), blocks, 2)
    lens = blocks.meta['length']
    picked = list(sampler)
    assert len(picked) == math.ceil(0.25 * len(blocks)) // 2 * 2
    assert lens[picked].max() <= np.sort(lens)[math.ceil(0.25 * len(blocks)) - 1]

# ---------------------------------------------------------------- length curriculum
def test_length_schedule():
    assert [curriculum_length(s, 2048, 128, 2048, 1000) for s in (0, 60, 100, 200, 500, 999, 1000)] == [128, 128, 256, 512, 1024, 1024, 2048]
    assert curriculum_length(0, 64, 16, 2048, 10) == 16 and curriculum_length(10, 64, 16, 2048, 10) == 64   # capped at the block
    for s in range(0, 1200, 37):                                   # never above the linear schedule, always a divisor
        L = curriculum_length(s, 1536, 100, 1536, 1000)
        assert 1536 % L == 0 and L <= max(100 + 1436 * min(1, s / 1000), 1)

class _Probe:
    order = 0
    def __init__(self): self.shapes, self.idx = [], []
    def state_dict(self): return {}
    def load_state_dict(self, sd): pass
    def before_batch(self, learn): self.shapes.append(tuple(learn.batch[0]['input_ids'].shape))
    def after_loss(self, learn): self.idx.append(learn.micro_batch['index'].tolist())

def _tiny_model(seed=0, vocab=64, n_pos=16):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=n_pos, resid_pdrop=0., embd_pdrop=0., attn_pdrop=0.)
    return GPT2LMHeadModel(cfg)

class ListBlocks(list):
    "Token blocks in memory with what the samplers read of `Blocks`: `meta` and `domains`."
    def __init__(self, blocks, meta, domains): super().__init__(blocks); self.meta, self.domains = meta, domains

def _blocks(n=8, T=16, vocab=64, seed=0, domains=None, quality=None):
    g = torch.Generator().manual_seed(seed)
    meta = {'length': np.full(n, T, dtype=float)}
    if domains is not None: meta['domain'] = np.asarray(domains)
    if quality is not None: meta['q'] = np.asarray(quality, dtype=float)
    return ListBlocks(list(torch.randint(0, vocab, (n, T), generator=g)), meta, sorted({f'd{d}' for d in domains}) if domains is not None else None)

def test_length_curriculum_in_the_loop_and_tracker_against_reference():
    "Rows grow 4 → 8 → 16 with tokens per batch constant; the tracker's averages equal the model's own per-row losses (lr 0)."
    blocks = _blocks(8, 16)
    tr = DynamicCurriculumTracker(8)
    sampler = TrainSampler(8, 2, seed=1, tracker=tr, dynamic_warmup=5)
    dl = lm_dataloader(blocks, 2, 0, sampler=sampler, with_index=True)
    model, probe = _tiny_model(), _Probe()
    learn = Learner(model, dl, task=LMTask(), opt=torch.optim.SGD(model.parameters(), lr=0.0), mixed_precision='no',
                    cbs=[LengthCurriculumCB(4, 16, steps=3), DynamicCurriculumCB(tr, every=2), probe], max_steps=4)
    learn.fit()
    assert probe.shapes == [(8, 4), (4, 8), (4, 8), (2, 16)]
    assert {r * c for r, c in probe.shapes} == {32}
    lengths = [s[1] for s in probe.shapes]
    ref = np.full(8, np.nan)
    model.eval()
    with torch.no_grad():
        for step, rows in enumerate(probe.idx):
            L = lengths[step]
            for i in dict.fromkeys(rows):
                x = blocks[i].view(-1, L)
                ref[i] = np.mean([model(input_ids=r[None], labels=r[None]).loss.item() for r in x])
    np.testing.assert_allclose(tr.avg, ref, rtol=1e-4)            # every block seen once: avg = its loss
    assert [r['difficult_ratio'] for r in learn.history if 'difficult_ratio' in r] != []

def test_length_curriculum_refuses_padded_batches():
    cb = LengthCurriculumCB(4, 16, 10)
    b = {'input_ids': torch.zeros(2, 16, dtype=torch.long), 'labels': torch.zeros(2, 16, dtype=torch.long), 'attention_mask': torch.ones(2, 16)}
    with pytest.raises(ConfigError, match='data.packing'): cb.split(b, 4)
    with pytest.raises(ConfigError, match='data.packing'): load_config(None, ['sampling.use_length_curriculum=true', 'sampling.end_length=64', 'data.packing=false'])
    with pytest.raises(ConfigError, match='sampling.end_length'): check_sampling(SamplingConfig(use_length_curriculum=True, end_length=2048), 256)

# ---------------------------------------------------------------- dynamic tracker
def test_tracker_hand_computation():
    tr = DynamicCurriculumTracker(4, decay=0.5, floor=0.25)
    tr.update([0, 1, 2], [2.0, 4.0, 6.0])
    tr.update([0, 0, 3], [6.0, 8.0, 5.0])             # block 0: rows averaged (7.0) then 0.5*2 + 0.5*7 = 4.5
    tr.update([2], [2.0])                             # block 2: 0.5*6 + 0.5*2 = 4.0
    np.testing.assert_allclose(tr.avg, [4.5, 4.0, 4.0, 5.0])
    z = (np.array([4.5, 4.0, 4.0, 5.0]) - 4.0) / 1.0
    np.testing.assert_allclose(tr.normalised(), z)
    np.testing.assert_allclose(tr.weights(), [0.5, 0.25, 0.25, 1.0])   # floor 0.25 replaces the zeros
    assert tr.weights().min() >= 0.25
    assert tr.difficult_ratio() == 1 / 4                              # only block 3 has z > 0.5
    sd = json.loads(json.dumps(tr.state_dict()))
    tr2 = DynamicCurriculumTracker(4); tr2.load_state_dict(sd); np.testing.assert_array_equal(tr2.avg, tr.avg)

def test_tracker_unseen_blocks_and_floor_in_sampling():
    tr = DynamicCurriculumTracker(6, floor=0.2)
    tr.update([0, 1, 2], [1.0, 1.0, 3.0])
    np.testing.assert_allclose(tr.weights(), [0.2, 0.2, 1, 1, 1, 1])
    s = TrainSampler(6, 6, seed=0, tracker=tr, dynamic_warmup=0)
    counts = np.zeros(6)
    for e in range(2000): s.set_epoch(e); counts += np.bincount(list(s), minlength=6)
    p = tr.weights() / tr.weights().sum()
    np.testing.assert_allclose(counts / counts.sum(), p, atol=0.01)
    assert counts[0] > 0                                            # easy blocks are never starved

# ---------------------------------------------------------------- domains
def test_domain_proportions_every_batch():
    dom = np.repeat([0, 1, 2], [50, 10, 4])
    for dw, bs, want in [(None, 6, [2, 2, 2]), ([3, 2, 1], 6, [3, 2, 1]), ([1, 1, 0], 4, [2, 2, 0])]:
        s = TrainSampler(64, bs, seed=5, domains=dom, domain_weights=dw)
        for e in range(3):
            s.set_epoch(e)
            for b in np.array(list(s)).reshape(-1, bs): assert np.bincount(dom[b], minlength=3).tolist() == want
    q = domain_quotas([0.5, 0.3, 0.2], 4, 100)
    assert (q.sum(1) == 4).all()
    np.testing.assert_allclose(q.sum(0) / 400, [0.5, 0.3, 0.2], atol=0.005)
    assert (np.abs(q - 4 * np.array([0.5, 0.3, 0.2])) < 1).all()

def test_domain_with_curriculum_gives_share_of_absent_domain_to_others():
    dom = np.array([0] * 10 + [1] * 10)
    diff = np.r_[np.arange(10), np.arange(10) + 100]                # domain 1 is all harder
    s = TrainSampler(20, 4, seed=0, domains=dom, curriculum=CurriculumSchedule(diff, 0.5, full_epoch=1))
    assert set(dom[list(s)]) == {0}
    s.set_epoch(1); b = np.array(list(s)).reshape(-1, 4)
    assert all(np.bincount(dom[x], minlength=2).tolist() == [2, 2] for x in b)

def test_domain_weights_errors_name_the_key():
    blocks = _blocks(8, 16, domains=[0, 0, 1, 1, 0, 0, 1, 1])
    with pytest.raises(ConfigError, match='sampling.domain_weights.*unknown'):
        train_sampler(SamplingConfig(use_domain_stratified=True, domain_weights={'d0': 1, 'web': 2}), DataConfig(domain_field='dom'), blocks, 2)
    with pytest.raises(ConfigError, match="no weight for domain.*d1"):
        train_sampler(SamplingConfig(use_domain_stratified=True, domain_weights={'d0': 1}), DataConfig(domain_field='dom'), blocks, 2)
    with pytest.raises(ConfigError, match='data.domain_field'): load_config(None, ['sampling.use_domain_stratified=true'])
    with pytest.raises(ConfigError, match='data.quality_field'): load_config(None, ['sampling.use_quality_weighting=true'])

# ---------------------------------------------------------------- quality
def test_quality_sampling_frequencies_chi_square():
    q = np.random.default_rng(1).uniform(0.05, 1, 20)
    s = TrainSampler(20, 4, seed=7, weights=quality_weights(q))
    counts = np.zeros(20)
    for e in range(1000): s.set_epoch(e); counts += np.bincount(list(s), minlength=20)
    expected = counts.sum() * q / q.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 43.8                                              # df 19, p = 0.001
    assert counts[q.argmax()] > 5 * counts[q.argmin()] * (q.max() / q.min()) / 10

def test_quality_zero_never_drawn_and_bad_scores():
    s = TrainSampler(4, 4, seed=0, weights=quality_weights([0, 1, 1, 1]))
    assert all(0 not in list((s.set_epoch(e), s)[1]) for e in range(50))
    with pytest.raises(DataError, match="data.quality_field='score'.*block 1"): quality_weights([0.5, 1.2], 'score')
    with pytest.raises(DataError, match='every quality score is 0'): quality_weights([0, 0])

def test_quality_and_domain_from_documents():
    from llm_nb.tokenisation import train_tokenizer
    texts = [f"{w} " * (30 + 3 * i) for i, w in enumerate(['ant', 'bee', 'cat', 'dog'] * 5)]
    docs = datasets.Dataset.from_dict(dict(text=texts, src=['a', 'b', 'b', 'b'] * 5, score=[0.1, 1.0, 0.5, 0.5] * 5))
    tok = train_tokenizer(texts, 300)
    scfg, dcfg = SamplingConfig(use_domain_stratified=True, use_quality_weighting=True), DataConfig(domain_field='src', quality_field='score')
    blocks = lm_datasets(datasets.DatasetDict(train=docs), tok, 16, **block_fields(scfg, dcfg))['train']
    assert blocks.domains == ['a', 'b']
    sampler, cbs = train_sampler(scfg, dcfg, blocks, 4, seed=0)
    dl = lm_dataloader(blocks, 4, tok.pad_token_id, sampler=sampler, with_index=True)
    for xb in dl:
        assert xb['domain'].tolist().count(0) == 2                     # balanced although domain a has 1/4 of the documents
        assert (xb['domain'] == torch.as_tensor(blocks.meta['domain'])[xb['index']]).all()
    bad = docs.map(lambda r, i: {'score': 1.5 if i == 6 else r['score']}, with_indices=True)
    with pytest.raises(DataError, match=r"record 7: field 'score' must be in \[0, 1\]"):
        lm_datasets(datasets.DatasetDict(train=bad), tok, 16, **block_fields(scfg, dcfg))
    with pytest.raises(DataError, match="no field 'score'"):
        lm_datasets(datasets.DatasetDict(train=docs.remove_columns('score')), tok, 16, **block_fields(scfg, dcfg))

# ---------------------------------------------------------------- resume and ranks
def _composed(rank=0, world_size=1, tracker=None):
    rng = np.random.default_rng(0)
    n = 96
    return TrainSampler(n, 4, seed=11, rank=rank, world_size=world_size, curriculum=CurriculumSchedule(rng.random(n), 0.5, 2),
                        weights=rng.uniform(0.1, 1, n), domains=np.arange(n) % 3, domain_weights=[2, 1, 1],
                        tracker=tracker, dynamic_warmup=1)

def test_state_dict_round_trip_mid_epoch_identical_order():
    tr = DynamicCurriculumTracker(96); s = _composed(tracker=tr); cb = DynamicCurriculumCB(tr, s)
    tr.update(np.arange(96), np.random.default_rng(2).random(96) * 5)
    s.set_epoch(1); full = list(s)
    tr.update(full[:8], np.full(8, 50.0))              # the epoch's first batches change the averages...
    sd = json.loads(json.dumps(cb.state_dict()))       # ...and a checkpoint is taken here
    tr2 = DynamicCurriculumTracker(96); s2 = _composed(tracker=tr2); cb2 = DynamicCurriculumCB(tr2, s2)
    len(s2)                                             # the CLI asks for the length before loading the checkpoint
    cb2.load_state_dict(sd)
    s2.set_epoch(1, skip=8)
    assert list(s2) == full[8:]
    np.testing.assert_array_equal(tr2.avg, tr.avg)
    fresh = _composed(tracker=tr2); fresh.set_epoch(1)
    assert list(fresh) != full                          # without the frozen weights the order would differ

def test_two_ranks_disjoint_shares_of_each_global_batch():
    for make in (lambda r: _composed(r, 2), lambda r: TrainSampler(30, 3, seed=2, rank=r, world_size=2)):
        whole, r0, r1 = make(0), make(0), make(1)
        for e in range(3):
            for s in (whole, r0, r1): s.set_epoch(e)
            g = whole.epoch_order(e)
            a, b = np.array(list(r0)).reshape(-1, whole.bs), np.array(list(r1)).reshape(-1, whole.bs)
            assert len(a) == len(b)
            for k in range(len(a)):
                gb = g[k * 2 * whole.bs:(k + 1) * 2 * whole.bs]
                assert sorted(np.r_[a[k], b[k]]) == sorted(gb)      # together: exactly the global batch
                assert a[k].tolist() == gb[:whole.bs].tolist() and b[k].tolist() == gb[whole.bs:].tolist()   # disjoint positions
    s = _composed(1, 2)
    for b in np.array(list(s)).reshape(-1, 4): assert np.bincount(b % 3, minlength=3).tolist() == [2, 1, 1]   # quotas per rank batch

def test_resume_through_checkpoint_in_the_loop(tmp_path):
    "Stop at step 10 (mid epoch 1, dynamic weights on), checkpoint, resume: steps 11-16 see the same blocks as an uninterrupted run."
    def run(max_steps, ck=None, save=None):
        blocks = _blocks(32, 16, domains=[0, 1] * 16)
        tr = DynamicCurriculumTracker(32)
        sampler = TrainSampler(32, 4, seed=4, tracker=tr, dynamic_warmup=1, domains=blocks.meta['domain'], weights=np.linspace(0.2, 1, 32))
        dl = lm_dataloader(blocks, 4, 0, sampler=sampler, with_index=True)
        model, probe = _tiny_model(), _Probe()
        learn = Learner(model, dl, task=LMTask(), opt=torch.optim.AdamW(model.parameters(), lr=1e-2), mixed_precision='no',
                        cbs=[LengthCurriculumCB(4, 16, 12), DynamicCurriculumCB(tr, sampler, every=1), probe], max_steps=max_steps)
        if ck: load_checkpoint(learn, ck)
        learn.fit()
        if save: save_checkpoint(learn, save)
        return probe.idx, tr
    full, tr_full = run(16)
    run(10, save=tmp_path/'ck')
    rest, tr_rest = run(16, ck=tmp_path/'ck')
    assert len(full) == 16 and len(rest) == 6
    assert rest == full[10:]
    np.testing.assert_allclose(tr_rest.avg, tr_full.avg, rtol=1e-5)

# ---------------------------------------------------------------- two real ranks (gloo)
_DDP_SCRIPT = r'''
import json, sys, numpy as np, torch
from accelerate import Accelerator
sys.path.insert(0, sys.argv[2])
from test_samplers import _blocks, _tiny_model, _Probe
from llm_nb.samplers import TrainSampler, DynamicCurriculumTracker, DynamicCurriculumCB
from llm_nb.data import lm_dataloader
from llm_nb.loop import Learner
from llm_nb.tasks import LMTask
acc = Accelerator(cpu=True)
blocks = _blocks(16, 16, domains=[0, 1] * 8)
tr = DynamicCurriculumTracker(16)
sampler = TrainSampler(16, 2, seed=3, rank=acc.process_index, world_size=acc.num_processes, tracker=tr, dynamic_warmup=1,
                       domains=blocks.meta['domain'])
model, probe = _tiny_model(), _Probe()
learn = Learner(model, lm_dataloader(blocks, 2, 0, sampler=sampler, with_index=True), task=LMTask(), accelerator=acc,
                opt=torch.optim.AdamW(model.parameters(), lr=1e-2), cbs=[DynamicCurriculumCB(tr, sampler, every=1), probe], max_steps=8)
learn.fit()
out = dict(idx=probe.idx, avg=tr.state_dict()['avg'], order1=sampler.epoch_order(1).tolist())
open(f"{sys.argv[1]}/rank{acc.process_index}.json", 'w').write(json.dumps(out))
'''

@pytest.mark.slow
def test_dynamic_curriculum_two_gloo_ranks(tmp_path):
    "Under two real ranks the tracker is gathered: both ranks hold the same averages, draw the same global order and take disjoint halves."
    import os, subprocess, sys, socket
    from pathlib import Path
    (tmp_path/'s.py').write_text(_DDP_SCRIPT)
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'ACCELERATE_USE_CPU': 'true'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                        '--master_port', str(port), str(tmp_path/'s.py'), str(tmp_path), str(Path(__file__).parent)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = [json.loads((tmp_path/f'rank{i}.json').read_text()) for i in (0, 1)]
    assert a['avg'] == b['avg'] and None not in a['avg']          # every block of epoch 0 seen by one rank, known to both
    assert a['order1'] == b['order1']
    for k, (x, y) in enumerate(zip(a['idx'], b['idx'])):
        g = (a['order1'] if k >= 4 else None)
        if g is not None: assert x + y == g[(k - 4) * 4:(k - 4) * 4 + 4]   # rank 0 then rank 1: the global batch
    assert not set(sum(a['idx'][:4], [])) & set(sum(b['idx'][:4], []))  # epoch 0 (a permutation): disjoint shares
