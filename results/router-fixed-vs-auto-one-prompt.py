import sys, time
import torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
from specrouter.bench.spec_bench import load_prompts
cat = sys.argv[1]
auto = SpecRouter.from_chain("auto", progress=False)
fixed = SpecRouter(auto.models, ["1.5b@w8a8", "1.5b"])
bp = load_prompts("../shared/bench/spec_bench_question.jsonl", [cat], 1)[0]
for rnd in range(2):
    for name, sr in (("fixed", fixed), ("auto", auto)):
        t = time.time()
        out = sr.generate([bp.text], SamplingParams(max_new_tokens=128))[0]
        dt = time.time() - t
        st = out.stats
        print(f"{rnd} {name:6s} {len(out.tokens)/dt:5.2f} tok/s  steps {st.steps} drafted {st.drafted} accepted {st.accepted} "
              f"decode_s {st.decode_s:.2f} total {dt:.2f} chains {dict(st.chains)}", flush=True)
