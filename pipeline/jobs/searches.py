"""``slg run``: every (prompt, method, budget) search of a config, its results streamed to ``output_dir``.

The job only: which searches, where their results go. The search lives in the policies, the
scheduling in the driver, Ray in ``pipeline.distributed.session``, the engines in ``actors``. Outputs in
``output_dir`` (a folder or a URL, see ``pipeline.outputs.destinations``): ``results.jsonl`` (a line per search,
appended and fsynced as each finishes), ``summary.json`` and ``config.yaml`` (written whole),
``best_reward_vs_budget.png`` and ``slg.log``. Rerunning
with the same ``output_dir`` and config resumes: finished searches are skipped. A different config
there is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import logging

from pipeline.distributed.search_record import SearchSpec
from pipeline.jobs.config import RunConfig, config_as_dict, config_as_yaml
from pipeline.jobs.prompts import load_prompts
from pipeline.jobs.report import plot_summary, prefix_warnings, summarise
from pipeline.logs import log_to_file
from pipeline.outputs.destinations import Checkpoints, OutputDir
from pipeline.outputs.files import JsonlSink, atomic_write_text, json_text, resume_from
from pipeline.search.methods import policy_class

log = logging.getLogger("slg")

# Keys that may change between a run and its resumption: they change no result.
RESUMABLE_KEYS = ("output_dir", "overwrite", "plot", "driver.", "ray.", "storage.", "collect.", "bench.")
THROUGHPUT_KEYS = ("elapsed_s", "rollouts_per_s", "tokens_per_s", "rollouts_generated", "rollouts_scored",
                   "prefixes_scored", "tokens_generated", "prompt_tokens", "cached_prompt_tokens", "rm_tokens",
                   "driver_busy_s", "driver_cpu_s", "driver_policy_cpu_s", "driver_calls_cpu_s", "replica_failures",
                   "replicas_lost", "replicas_rejoined", "replicas_retired")


def search_grid(prompts, methods, budgets, search_config, skip=frozenset()) -> list[SearchSpec]:
    """Every (prompt, method, budget) search not in ``skip``, a prompt's searches next to each other."""
    return [SearchSpec(p, method, budget, policy_class(method), search_config)
            for p in prompts for budget in budgets for method in methods if (p.prompt_id, method, budget) not in skip]


def run(config: RunConfig) -> dict:
    """Run the configured searches to completion (resuming what ``output_dir`` holds); returns the summary.

    ``output_dir`` may be a URL: files are staged locally and uploaded at each checkpoint
    (``storage.checkpoint_interval_s``) and at the end, also when the run fails."""
    from pipeline.distributed.session import Session

    prompts = load_prompts(config.data)  # bad data fails here, before Ray starts
    outputs = OutputDir(config.output_dir)
    for name in ("results.jsonl", "config.yaml", "slg.log"):
        outputs.file(name).pull()
    log_to_file(outputs.file("slg.log").local)
    previous = resume_from(outputs.staging, config_as_dict(config), config.overwrite, RESUMABLE_KEYS)
    done = {(r["prompt_id"], r["method"], r["budget"]) for r in previous}
    searches = search_grid(prompts, config.methods, config.budgets, config.search, skip=done)
    log.info("running %d searches (%d prompts x %d methods x %d budgets), %d already done, into %s",
             len(searches) + len(previous), len(prompts), len(config.methods), len(config.budgets), len(previous),
             config.output_dir)
    results = list(previous)
    checkpoints = Checkpoints(lambda: outputs.push(["results.jsonl", "slg.log"]), config.storage.checkpoint_interval_s)
    try:
        with Session(config) as session:
            # a cluster it cannot reach, or resources it lacks, fail here: output_dir is still as it was
            session.start_driver(searches)
            if config.overwrite:
                for name in ("results.jsonl", "summary.json", "best_reward_vs_budget.png"):
                    outputs.file(name).remove()
            atomic_write_text(outputs.file("config.yaml").local, config_as_yaml(config))
            outputs.push(["config.yaml"])
            sink = JsonlSink(outputs.file("results.jsonl").local)

            def keep(finished: list[dict]) -> None:
                sink.write(finished)
                results.extend(finished)
                checkpoints.due()

            with sink:
                progress = session.drive(keep, resumed=len(previous))
        summary = summarise(results, config.methods, config.budgets)
        summary["throughput"] = {key: progress[key] for key in THROUGHPUT_KEYS}
        for line in prefix_warnings(summary):
            log.warning("%s", line)
        atomic_write_text(outputs.file("summary.json").local, json_text(summary, indent=2) + "\n")
        if config.plot:
            plot_summary(summary, outputs.file("best_reward_vs_budget.png").local)
    finally:
        outputs.push()  # what finished is kept, also when the run fails
    outputs.close()
    return summary
