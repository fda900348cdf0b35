"""``docs/results.md``, regenerated: every offline result table, each under the command that made it.

``python -m pipeline.jobs.results_book docs/results.md`` (``make results``) runs each command below
through the ``slg`` CLI, reads the JSON it writes, and writes the page. Nothing in the page is typed
by hand: rerunning it on another machine reproduces the numbers (the replays are seeded); only the
timings differ. Live runs (``slg run`` on the toy models, ``slg bench``) are not here: they need the
engines and minutes of CPU each; their pages name the commands that produce them.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.offline.multipliers import format_multiplier, format_multiplier_range, interval_digits

METHODS = "bon,slg,slg_adaptive,slg_share,oracle"
BANK_METHODS = "bon,slg,slg_adaptive,slg_share"
BANK_REPEATS = 1000  # a bank's best-of-N curve is flat by N = 128-512: 200 repeats left its multipliers +-0.15x there
GRID = ("replay --world all --prompts 200 --repeats 200 --budgets 4,8,16,32,64,100,256,1000,4096 "
        f"--methods {METHODS} --seed 3")
BANKS = ("replay --bank data/banks/toy_t8.parquet,data/banks/toy_t16.parquet --budgets 8,16,32,64,128,256,512 "
         f"--methods {BANK_METHODS} --repeats {BANK_REPEATS} --seed 3")
HELD_OUT = ("replay --bank data/banks/toy_t8_temp07.parquet,data/banks/toy_t12.parquet --budgets 8,16,32,64,128,256,512 "
            f"--methods {BANK_METHODS} --repeats {BANK_REPEATS} --seed 3")
LATER = ("replay --bank data/banks/toy_t8_temp13.parquet,data/banks/toy_t24.parquet --budgets 8,16,32,64,128,256 "
         f"--methods {BANK_METHODS} --repeats {BANK_REPEATS} --seed 3")
NEWEST = ("replay --bank data/banks/toy_t4.parquet,data/banks/toy_t8_temp05.parquet --budgets 8,16,32,64,128,256 "
          f"--methods {BANK_METHODS} --repeats {BANK_REPEATS} --seed 3")
AFTER_COMMIT = ("replay --bank data/banks/toy_t20.parquet --budgets 8,16,32,64,128,256,512 "
                f"--methods {BANK_METHODS} --repeats {BANK_REPEATS} --seed 3")
THREE_DEPTHS = ("replay --bank data/banks/toy_t10.parquet,data/banks/toy_t14_temp09.parquet,data/banks/toy_t18.parquet "
                f"--budgets 8,16,32,64,128,256 --methods {BANK_METHODS} --repeats {BANK_REPEATS} --seed 3")
SMALL_BANK = (f"replay --bank data/toy_bank/bank.jsonl --budgets 8,16,32,64 --methods {BANK_METHODS} "
              f"--repeats {BANK_REPEATS} --seed 3")
REPLAYS_OF_BANKS = [  # (title, text, command, the label of the table's first column or None)
    ("Real model outputs: the toy models' banks",
     "50 held-out problems x 16 states x 512 completions of the trained toy generator, scored by the toy reward "
     "model, states cut at 8 and at 16 characters (docs/toy-models.md). The two ceilings are what an allocation "
     "that knew every distribution would reach (docs/method.md).", BANKS, "bank"),
    ("Real model outputs: banks held out of slg_share's design",
     "The same toy models on 50 other problems each (test rows 250-299 sampled at temperature 0.7 with T = 8; "
     "rows 300-349 at temperature 1 with T = 12): slg_share's settings were chosen on the banks above, and these "
     "were replayed only once they were fixed.", HELD_OUT, "bank"),
    ("Real model outputs: banks collected after the design",
     "50 more problems each, 16 states x 256 completions (budgets to 256): test rows 350-399 at temperature 1.3 "
     "with T = 8, and rows 400-449 at temperature 1 with T = 24, where a state's prefix nearly fixes its response. "
     "On toy_t24 slg_share was below best-of-N at N = 32 until the repeat check (docs/design-record.md) gave the second "
     "half of a state that only repeats itself back to the prompt, and at N = 12-30 until that check also judged "
     "first halves of 2-5 rollouts; on toy_t8_temp13 the check changes no result at N >= 32 (replayed before and "
     "after it).",
     LATER, "bank"),
    ("Real model outputs: banks held out of every setting",
     "50 more problems each, 16 states x 256 completions, collected after slg_share's settings were fixed "
     "(all but share.commit_from and share.full_share_from, which came later): "
     "test rows 500-549 at temperature 1 with T = 4, where a state is little more than the prompt (no allocation "
     "has much to gain: see the ceilings), and rows 550-599 at temperature 0.5 with T = 8, where responses repeat "
     "and best-of-N saturates early.",
     NEWEST, "bank"),
    ("Real model outputs: a bank collected after share.commit_from",
     "50 more problems, 16 states x 512 completions, collected after slg_share's rule for N >= 256 "
     "(share.commit_from) was fixed, and replayed once: test rows 600-649 at temperature 1 with T = 20 "
     "(share.full_share_from, for N = 64-255, came after it).",
     AFTER_COMMIT, "bank"),
    ("Real model outputs: three depths no other bank has",
     "50 more problems each, 16 states x 256 completions, collected on 2026-12-07 to judge share.lead_gap (left off): "
     "test rows 550-599 at temperature 1 with T = 10, rows 500-549 at temperature 0.9 with T = 14, and rows 650-699 "
     "at temperature 1 with T = 18. Held out of every setting but the last two: share.reward_weight was re-measured "
     "and share.below_best_lead chosen with these beside the banks above (docs/design-record.md).",
     THREE_DEPTHS, "bank"),
    ("Real model outputs: the earlier bank",
     "100 other problems x 16 states x 64 completions, T = 8 (budgets beyond 64 would redraw a state's pool).",
     SMALL_BANK, None),
]
SHAPES = [("states repeat themselves: gaussian sigma1 = 0.25", "--world gaussian --param sigma1=0.25"),
          ("states hardly differ: gaussian sigma0 = 0.25", "--world gaussian --param sigma0=0.25"),
          ("mostly hard prompts: bimodal p0 = 0.9", "--world bimodal --param p0=0.9"),
          ("very heavy tails: Student-t df = 1.5", "--world heavy --param df=1.5"),
          ("binary reward: discrete, 2 levels", "--world discrete --param levels=2"),
          ("many levels: discrete, 20 levels", "--world discrete --param levels=20"),
          ("saturated: bounded mu0 = 3", "--world bounded --param mu0=3"),
          ("uninformative prefixes: discrete, prefix_noise = 5", "--world discrete --param prefix_noise=5"),
          ("noisy prefixes on 10 levels: discrete levels = 10, prefix_noise = 3",
           "--world discrete --param levels=10 --param prefix_noise=3"),
          ("narrow states on 5 levels: discrete sigma1 = 0.5", "--world discrete --param sigma1=0.5"),
          ("uninformative prefixes: gaussian, prefix_noise = 5", "--world gaussian --param prefix_noise=5"),
          ("wide prompts, narrow states: gaussian sigma0 = 2, sigma1 = 0.5",
           "--world gaussian --param sigma0=2 --param sigma1=0.5")]
SHAPE_REPLAY = f"replay {{spec}} --prompts 200 --repeats 100 --budgets 8,16,32,48,64,256,1000 --methods {BANK_METHODS} --seed 3"
CURVES = ["curves --real", "curves --world all", "curves --bank data/banks/toy_t8.parquet"]


def run_slg(command: str, out: Path) -> tuple[dict, float]:
    """Run ``slg COMMAND --out OUT`` (as ``python -m pipeline.run``); its JSON and wall time."""
    started = time.perf_counter()
    argv = [sys.executable, "-m", "pipeline.run", *shlex.split(command), "--out", str(out)]
    if command.startswith("replay"):
        argv.append("--no-progress")
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text()), time.perf_counter() - started


def fmt(value: float, ci: float) -> str:
    digits = interval_digits(ci, most=7)
    return f"{value:.{digits}f} +- {ci:.{digits}f}"


def method_table(rows: list[dict], label_key: str | None, methods: list[str], ceilings: list[dict] | None = None) -> str:
    """One line per (target, N): each method's mean best reward +- its interval (multipliers)."""
    header = ([label_key] if label_key else []) + ["N"] + methods + (["clairvoyant", "paid discovery"] if ceilings else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = {(r.get(label_key) if label_key else "", r["budget"], r["method"]): r for r in rows}
    ceiling_cells = {(c.get(label_key, ""), c["budget"], c["ceiling"]): c for c in ceilings or []}
    for target in dict.fromkeys(r.get(label_key) if label_key else "" for r in rows):
        for budget in sorted({r["budget"] for r in rows}):
            line = ([_short(target)] if label_key else []) + [str(budget)]
            line += [_cell(cells[(target, budget, method)]) for method in methods]
            if ceilings:
                line += [_cell(ceiling_cells[(target, budget, name)]) for name in ("clairvoyant", "paid_discovery")]
            lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def _cell(row: dict) -> str:
    """A mean best reward +- its 95% interval (an exact ceiling: its value alone) and its multiplier,
    then the multipliers of the interval's ends where they differ from it."""
    multiplier = format_multiplier(row["compute_multiplier"])
    ends = row.get("compute_multiplier_range")
    if ends and any(format_multiplier(end) != multiplier for end in ends):
        multiplier += f"; {format_multiplier_range(ends)}"
    value = fmt(row["mean_best_reward"], row["ci95"]) if row["ci95"] > 0 else f"{row['mean_best_reward']:.4f}"
    return f"{value} ({multiplier})"


def _short(label) -> str:
    return Path(str(label)).name if "/" in str(label) else str(label)


def section(title: str, text: str, command: str, table: str, elapsed: float) -> str:
    return f"## {title}\n\n{text}\n\n```bash\nslg {command}\n```\n\n({elapsed:.0f} s on the machine that wrote this page)\n\n{table}\n"


def build(folder: Path) -> str:
    parts = ["# Results\n", "Generated by `make results` "
             "(`python -m pipeline.jobs.results_book docs/results.md`). Mean best reward +- its 95% interval "
             "(the Monte Carlo error over repeats), and in brackets the compute multiplier: the best-of-N budget "
             "whose exact value reaches that mean, over N (`>1024` when even 1024 N does not; `saturated` where "
             "best-of-N's exact curve at 1024 N still lies within the interval, so that no multiplier is "
             "identified), then the multipliers of the interval's ends where they differ from it: where best-of-N's "
             "curve is flat (a bank at N = 128-512) a small interval spans a wide range of multipliers. The "
             "clairvoyant ceiling of a bank is exact; paid discovery averages simulated discoveries (docs/method.md, "
             "\"Ceilings\"). A method's paired difference from bon, episode by episode, is in `slg replay`'s own "
             "table (\"vs bon (paired)\").\n"]
    for title, text, command, label in REPLAYS_OF_BANKS:
        payload, elapsed = run_slg(command, folder / "banks.json")
        table = method_table(payload["results"], label, BANK_METHODS.split(","), payload["ceilings"])
        parts.append(section(title, text, command, table, elapsed))
    payload, elapsed = run_slg(GRID, folder / "grid.json")
    parts.append(section("Simulated worlds: the budget grid", "Five families, fresh prompts, exact ground truth "
                         "(docs/method.md, worlds).", GRID, method_table(payload["results"], "world", METHODS.split(",")),
                         elapsed))
    rows, total = [], 0.0
    for title, spec in SHAPES:
        payload, elapsed = run_slg(SHAPE_REPLAY.format(spec=spec), folder / "shape.json")
        rows += [{**r, "shape": title} for r in payload["results"]]
        total += elapsed
    parts.append(section("Shapes the methods were not designed on", "Each line's command is the one below with its "
                         "own world and parameter: " + "; ".join(f"`{spec}`" for _, spec in SHAPES) + ".",
                         SHAPE_REPLAY.format(spec="--world FAMILY --param KEY=VALUE"),
                         method_table(rows, "shape", BANK_METHODS.split(",")), total))
    for command in CURVES:
        payload, elapsed = run_slg(command, folder / "curves.json")
        parts.append(section(f"Prediction: `slg {command}`", "Median / mean |error| of the predicted best-of-n in "
                             "units of each pool's sd, for the predictor, the paper's tail fit and the plug-in, and "
                             "how often the predictor's 95% interval holds the exact value (docs/prediction.md).",
                             command, curves_table(payload), elapsed))
    return "\n".join(parts)


def curves_table(report: dict) -> str:
    lines = ["| source | m | n | predicted | tail fit | plug-in | interval covers |", "|---|---|---|---|---|---|---|"]
    for name, block in report.items():
        for c in block["cells"]:
            errors = [f"{c[m]['median_abs_error']:.3f} / {c[m]['mean_abs_error']:.3f}" for m in ("predicted", "tail_fit", "plug_in")]
            lines.append(f"| {name} | {c['m']} | {c['n']} | " + " | ".join(errors) + f" | {c['interval_coverage']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0] if argv else "docs/results.md")
    with tempfile.TemporaryDirectory(prefix="slg-results-") as folder:
        text = build(Path(folder))
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
