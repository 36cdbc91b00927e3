"""Which quantizer kind costs the QAT recipe its accuracy: PTQ of the recipe in torch with one kind switched off.

    cd /tmp && PYTHONPATH=/work/main/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 /work/main/.venv/bin/python \\
        /work/main/benchmarks/qat_sites_ablation.py 600 base off-residual_add off-matmul_input off-linear_input res-max

Rows: base (the recipe), off-KIND (that kind disabled), cal-NAME (calibrator NAME for all), res-NAME (residual adds
ranged by calibrator NAME, the rest percentile; prints each range), 8bit (full-range weights). Prints JSON lines.
"""
import sys, time, json, random
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import torch
import finetune
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding
from optimum.quantization import QATConfig
from optimum.quantization.qat.prepare import prepare, forward_loop_from_batches, quantizers
torch.manual_seed(0)
model_dir = finetune.squad_qa_model()
recipe = finetune.SquadRecipe()
tok = AutoTokenizer.from_pretrained(model_dir)
heldout = finetune.evenly_spaced(finetune.load_squad_examples("heldout"), int(sys.argv[1]))
train_examples = finetune.load_squad_examples("train")
features = finetune.squad_train_features(tok, train_examples, recipe)
order = random.Random(0).sample(range(len(features)), k=2048)
ts = features.select(order)
coll = DataCollatorWithPadding(tok)
batches = []
for i in range(8):
    b = coll([{k: v for k, v in ts[j].items() if k not in ("start_positions","end_positions")} for j in range(i*16, i*16+16)])
    batches.append(dict(b))
print("features", len(features))
def run(name, cfg_kwargs, disable=()):
    m = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
    prepare(m, QATConfig(**cfg_kwargs), forward_loop_from_batches(batches))
    for n, q in quantizers(m):
        if q.kind in disable:
            q.enabled = False
    t = time.time()
    with torch.no_grad():
        s = finetune.squad_pipeline_scores(m, tok, heldout, recipe)
    print(json.dumps({"name": name, **s, "sec": round(time.time()-t)}), flush=True)
configs = [a for a in sys.argv[2:]]
for c in configs:
    if c == "fp32":
        m = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
        print(json.dumps({"name": "fp32", **finetune.squad_pipeline_scores(m, tok, heldout, recipe)}), flush=True)
    elif c == "base": run(c, {})
    elif c == "8bit": run(c, {"reduce_range": False})
    elif c.startswith("cal-"): run(c, {"calibrator": c[4:]})
    elif c.startswith("off-"): run(c, {}, disable=(c[4:],))
    elif c.startswith("res-"):
        other = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
        prepare(other, QATConfig(calibrator=c[4:]), forward_loop_from_batches(batches))
        amax = {n: q.amax.clone() for n, q in quantizers(other) if q.kind == "residual_add"}
        m = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
        prepare(m, QATConfig(), forward_loop_from_batches(batches))
        for n, q in quantizers(m):
            if n in amax:
                print(n, float(q.amax), float(amax[n]))
                q.amax.copy_(amax[n])
        with torch.no_grad():
            s = finetune.squad_pipeline_scores(m, tok, heldout, recipe)
        print(json.dumps({"name": c, **s}), flush=True)
    elif c == "weights-only": run(c, {}, disable=("linear_input","matmul_input","residual_add"))
