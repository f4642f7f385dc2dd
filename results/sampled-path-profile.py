import cProfile, pstats, sys, time, torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams
T = float(sys.argv[1]); spec = sys.argv[2]
sr = SpecRouter.from_chain("1.5b@w8a8>1.5b", dtype="fp32", progress=False, spec_len=spec)
ids = sr.encode_prompt("Write a persuasive email to convince your introverted friend to volunteer as a guest speaker at a local event.")
p = SamplingParams(temperature=T, max_new_tokens=48, seed=1) if T > 0 else SamplingParams(max_new_tokens=48)
sr.generate_ids([ids], SamplingParams(max_new_tokens=4))
t0 = time.perf_counter()
pr = cProfile.Profile(); pr.enable()
g = sr.generate_ids([ids], p)[0]
pr.disable()
print("T", T, "tokens", len(g.tokens), "time", time.perf_counter() - t0, "stats", getattr(g, "stats", None))
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
