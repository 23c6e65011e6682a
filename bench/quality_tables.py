"""Markdown tables of the quality benchmark's results, for the README and closing notes.

    python bench/quality_tables.py [bench/results/quality_hm-sample.json ...]

Per data set: every system on the paired (LLM) test events with Recall@10 [95% CI],
NDCG@10 and MRR; the paired differences of each mix-up against its rivals; Recall@10 /
NDCG@10 on the repeat, explore and cold-start slices; the text query's share of the last
item's title; and the choices made on validation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def p_value(p: float, n_boot: int = 1000) -> str:
    """A bootstrap p-value: below the resolution of ``n_boot`` resamples says so."""
    return f"p < {1 / n_boot:g}" if p < 1 / n_boot else f"p = {p:.3g}"


def tables(result: dict[str, Any]) -> str:
    d = result["dataset"]
    lines = [f"#### {d['name']} ({d.get('protocol', 'temporal')}): {d['n_llm_test_events']:,} test purchases "
             f"scored by every system ({d['n_test_events']:,} for the systems without an LLM), "
             f"{d['n_items']:,} items", "",
             "| system | Recall@10 [95% CI] | NDCG@10 | MRR | all test events: Recall@10 / NDCG@10 |",
             "|---|---|---|---|---|"]
    for name, m in result["slices"]["all"].items():
        lo, hi = m["recall@10_ci"]
        full = result["systems"][name]
        lines.append(f"| {name} | {m['recall@10']:.4f} [{lo:.4f}, {hi:.4f}] | {m['ndcg@10']:.4f} | {m['mrr']:.4f} "
                     f"| {full['recall@10']:.4f} / {full['ndcg@10']:.4f} (n={full['n_events']:,}) |")
    lines += ["", "| mix-up − rival (same events) | ΔRecall@10 [95% CI] (p) | ΔNDCG@10 [95% CI] (p) |",
              "|---|---|---|"]
    for p in result["paired"]:
        cells = [f"{p[m]['diff']:+.4f} [{p[m]['ci'][0]:+.4f}, {p[m]['ci'][1]:+.4f}] ({p_value(p[m]['p_value'])})"
                 for m in ("recall@10", "ndcg@10")]
        lines.append(f"| {p['system']} − {p['rival']} | {cells[0]} | {cells[1]} |")
    slices = [s for s in result["slices"] if s != "all"]
    n = {s: next(iter(result["slices"][s].values()))["n_events"] for s in slices}
    lines += ["", "| system | " + " | ".join(f"{s} (n={n[s]:,}) R@10 / NDCG@10" for s in slices) + " |",
              "|---|" + "---|" * len(slices)]
    for name in result["slices"]["all"]:
        cells = [f"{result['slices'][s][name]['recall@10']:.4f} / {result['slices'][s][name]['ndcg@10']:.4f}"
                 for s in slices]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for enc, c in result["choices"].items():
        if c.get("anchor_sweep"):
            lines += ["", f"Text query ({enc}), share *a* of the last item's title (chosen a = "
                      f"{c['fusion'].get('anchor', 0.0):.1f}); test figures at the served λ:", "",
                      "| a | mix-up R@10 / NDCG@10 | text half R@10 | validation R@10 |", "|---|---|---|---|"]
            val = (c.get("anchor") or {}).get("val_curve", {})
            for r in c["anchor_sweep"]:
                v = val.get(str(float(r["anchor"])))
                lines.append(f"| {r['anchor']:.1f} | {r['recall@10']:.4f} / {r['ndcg@10']:.4f} | "
                             f"{r['text_only_recall@10']:.4f} | {'' if v is None else f'{v:.4f}'} |")
    lines += ["", "Chosen on validation: " + "; ".join(
        f"{enc}: {json.dumps(c['fusion'])}" for enc, c in result["choices"].items()), ""]
    claim = result["claim"]["per_encoder"]
    lines += ["Target (" + result["claim"]["statement"] + "): " + "; ".join(
        f"{enc} {'holds' if v['holds'] else 'missed'} (R@10 {v['ratio']['recall@10']:.2f}×, NDCG@10 "
        f"{v['ratio']['ndcg@10']:.2f}× {v['best_rival']['ndcg@10']})" for enc, v in claim.items()), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or sorted(RESULTS.glob("quality_*.json"))
    for path in paths:
        print(tables(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
