"""The table of README.md from the TSVs beside it: certified accuracy with 95% Clopper-Pearson intervals over images."""
import csv
from pathlib import Path

from scipy.stats import beta
radii = (0.0, 0.25, 0.5, 0.75, 1.0)
def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))
def ci(k, n):
    lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return lo, hi
out = ["| sigma | system | noisy input | images | " + " | ".join(f"r = {r:g}" for r in radii) + " |",
       "|---|---|---|---|" + "---|" * len(radii)]
for s in ("0.5", "1.0"):
    for name, label, inp in (("fp", "FloatRS-fp", "float, unbounded"), ("ptq", "FloatRS-quant", "rounded, unbounded (int16 input)"), ("ptq-sat", "FloatRS-quant", "rounded, saturated to [0, 255]")):
        r = rows(Path(__file__).parent / f"sigma{s}-{name}.tsv")
        n = len(r)
        cells = []
        for rad in radii:
            k = sum(1 for x in r if x["correct"] == "1" and float(x["radius"]) >= rad and x["predict"] != "-1")
            lo, hi = ci(k, n)
            cells.append(f"{k / n:.3f} [{lo:.2f}, {hi:.2f}]")
        out.append(f"| {s} | {label} | {inp} | {n} | " + " | ".join(cells) + " |")
print("\n".join(out))
