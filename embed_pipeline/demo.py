"""`embed-pipeline demo`: the whole loop in one Dagster instance, each step said in plain words.

0. The stock model serves first (registered as the first champion, its index built by the same
   re-embedding path a new champion takes), so there is something to beat and to roll back to.
1. Train: the training job, as `embed-pipeline run` runs it; the report (lift, CI, gate).
2. Promote: the promotion sensor is evaluated on the new report and its run request executed,
   as the daemon would.
3. Serve: the corpus change sensor sees a new champion and requests every shard; the re-embedding
   run and then the served-index run (requested by `served_index_sensor`) publish its index; three
   eval queries are answered before (stock) and after (tuned), side by side.
4. Change the corpus: a few passages edited, one added, one deleted (in a working copy, never in
   data/); the sensor requests only the touched shards; counts printed.
5. Roll back: the previous champion serves again.

When the gate refuses the candidate (an honest outcome: the lift is too small or not
distinguishable from noise), the demo says so, shows that the promotion sensor skips it and the
current champion (on a first demo, the stock model) keeps serving, still runs step 4 against its
index, and ends with exit
3 (as `embed-pipeline run` does for a refusal); there is nothing to roll back to.

Every step goes through the real sensor evaluation and jobs (partitions included); only the
daemon's loop is replaced by calling each sensor once. Exit 0 when every step behaved as
described, 3 when it did but the gate refused, 1 when a step did not; `--json` prints one
object: report, promoted, reembedded, rollback (null after a refusal), seconds.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import yaml

STEP_NAMES = ("serve the stock model", "train", "promote", "serve the new champion", "change the corpus", "roll back")
REFUSED_SKIPS = ("serve the new champion", "roll back")  # need a promoted candidate


class DemoFailure(RuntimeError):
    """A step did not behave as the walkthrough says."""


def _prepare(config_path: str) -> Path:
    """A demo config whose corpus is a working copy under the artifacts dir (the walkthrough edits it)."""
    from embed_pipeline.lib.config import config_dict, load_config

    config = load_config(config_path)
    work = config.artifacts_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus{config.corpus.suffix}"
    if not corpus.exists():
        shutil.copy(config.corpus, corpus)
    settings = {k: v for k, v in config_dict(config).items() if v is not None}
    settings["corpus"] = str(corpus)
    target = work / "config.yaml"
    target.write_text("# Written by `embed-pipeline demo` from " + str(Path(config_path).resolve()) + "\n"
                      + yaml.safe_dump(settings, sort_keys=False))
    return target


def run_demo(config_path: str | None, as_json: bool = False, verbose: bool = False,
             say: Callable[[str], None] | None = None) -> int:
    from embed_pipeline.console import Session, say as cli_say
    from embed_pipeline.starter import default_config

    say = say or cli_say
    seconds: dict[str, float] = {}
    out: dict = {}
    session = Session(str(_prepare(config_path or str(default_config()))))
    session.recover()
    session.reconcile()
    demo = Walkthrough(session, say, verbose)
    steps = dict(zip(STEP_NAMES, (demo.serve_stock, demo.train, demo.promote, demo.serve_champion,
                                  demo.change_corpus, demo.roll_back), strict=True))
    name = STEP_NAMES[0]
    try:
        for name, step in steps.items():
            if name in REFUSED_SKIPS and demo.refused:
                continue
            say(f"--- {name} ---")
            start = time.perf_counter()
            result = step()
            seconds[name] = round(time.perf_counter() - start, 1)
            if result:
                out.update(result)
    except DemoFailure as exc:
        say(f"demo stopped at '{name}': {exc}")
        if as_json:
            print(json.dumps({**out, "seconds": seconds, "failed_step": name, "error": str(exc)}, indent=2))
        return 1
    say("done: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    if demo.refused:
        say("the gate refused this candidate, so nothing was promoted and nothing rolled back: the champion "
            "from before this run still serves. See data/README.md for the demo's lift measured over several seeds.")
        out.update(promoted=False, rollback=None)
    home = session.instance.root_directory
    say("look at what just happened:\n"
        f"  Dagster UI: DAGSTER_HOME={home} {Path(__import__('sys').executable).parent / 'embed-pipeline'} ui "
        f"--config {session.config_path}\n"
        f"  MLflow UI:  {Path(__import__('sys').executable).parent / 'mlflow'} ui --backend-store-uri "
        f"{session.config.tracking_uri} --port 5000 --workers 1")
    if as_json:
        print(json.dumps({**out, "seconds": seconds}, indent=2))
    return 3 if demo.refused else 0


class Walkthrough:
    """The demo's steps over one session (config, instance, definitions)."""

    def __init__(self, session, say: Callable[[str], None], verbose: bool):
        self.session, self.say, self.verbose = session, say, verbose
        self.config = session.config
        self.examples: list[dict] = []
        self.before: list[list[dict]] = []
        self.refused = False  # the gate refused the candidate: the stock model keeps serving

    # --- helpers -------------------------------------------------------------------------------
    def _execute(self, job: str, **kwargs):
        result = self.session.execute(job, verbose=self.verbose, **kwargs)
        if not result.success:
            from embed_pipeline.console import root_cause

            causes = [root_cause(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            raise DemoFailure(f"{job} failed: {'; '.join(causes) or 'see the events above'}")
        return result

    def _resources(self) -> dict:
        from embed_pipeline.defs.resources import MlflowResource, PipelineResource

        return {"pipeline": PipelineResource(config_path=self.session.config_path), "mlflow": MlflowResource()}

    def _reembed(self) -> dict:
        """One corpus_change_sensor tick, its runs executed, then the served index rebuilt; counts."""
        import dagster as dg

        from embed_pipeline.defs.corpus_sensor import corpus_change_sensor, served_index_sensor
        from embed_pipeline.defs.partitions import corpus_shards

        instance = self.session.instance
        state_file = self.config.artifacts_dir / "demo" / "corpus_sensor_cursor.json"
        cursor = state_file.read_text() if state_file.exists() else None
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=self._resources())
        result = corpus_change_sensor(context)
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(corpus_shards.name, list(request.partition_keys))
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(corpus_shards.name, key)
        state_file.write_text(result.cursor)
        counts = {"passages": 0, "changed": 0, "encoded": 0, "reused": 0, "runs": 0}
        last = None
        for request in result.run_requests or []:
            tags = {**request.tags, "dagster/run_key": request.run_key}
            run = self._execute("reembed_job", tags=tags, partition_key=request.partition_key) if request.partition_key \
                else self._execute("reembed_job", tags=tags)
            counts["runs"] += 1
            # One run over a range of shards reports its totals on each partition's event: read one.
            meta = run.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
            counts["passages"] += meta["dagster/row_count"].value
            counts["encoded"] += meta["passages_encoded"].value
            counts["reused"] += meta["passages_from_cache"].value
            counts["changed"] += meta["passages_encoded"].value + meta["passages_removed"].value
            last = run
        if last is not None:
            record = instance.get_run_record_by_id(last.run_id)
            success = next(e for e in instance.all_logs(last.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS))
            status_context = dg.build_run_status_sensor_context(
                sensor_name="served_index_sensor", dagster_event=success.dagster_event, dagster_instance=instance,
                dagster_run=record.dagster_run, resources=self._resources())
            request = served_index_sensor(status_context)
            if isinstance(request, dg.RunRequest):
                self._execute("served_index_job", tags={"dagster/run_key": request.run_key})
        return counts

    def _search(self, mode: str | None = None) -> list[list[dict]]:
        from embed_pipeline.lib.retrieval import search_served

        return [search_served(self.config, q["text"], 3, mode) for q in self.examples]

    # --- steps ---------------------------------------------------------------------------------
    def serve_stock(self) -> dict:
        """The stock model as the first champion, unless something already serves."""
        from embed_pipeline.lib.config import resolve_model_name
        from embed_pipeline.lib.encoding import encode_precision
        from embed_pipeline.lib.hardware import pick_device
        from embed_pipeline.lib.promotion import expected_served, promote
        from embed_pipeline.lib.retrieval import RetrievalSpec

        if expected_served(self.config.artifacts_dir) is None:
            tracker = self.session.tracker()
            base = resolve_model_name(self.config.base_model)
            with tracker.open_run("stock-model", {"role": "the stock model, served before any fine-tuning"}) as run_id:
                version = tracker.register_embedding_model(self.config.registered_model_name, run_id, Path(base),
                                                           query_prompt=self.config.query_prompt,
                                                           passage_prompt=self.config.corpus_prompt, tags={"model_path": base})
            promote(self.config.artifacts_dir, {"model_name": self.config.registered_model_name, "model_version": version,
                                                "model_dir": base, "mlflow_run_id": run_id, "index_path": "",
                                                "retrieval": RetrievalSpec(
                                                    "dense", None, None, "the stock model serves dense", self.config.retrieval.rrf_k,
                                                    self.config.retrieval.depth,
                                                    encode_precision(self.config.index.encode_precision, pick_device())).as_dict()},
                    "embed-pipeline demo", "the stock model serves until a fine-tuned one earns its place", tracker.set_alias)
            self.say(f"the stock model {self.config.base_model} is registered as v{version} and serves first")
        counts = self._reembed()
        self.say(f"its index: {counts['passages']} passages embedded in {counts['runs']} run(s) "
                 f"({counts['encoded']} encoded, {counts['reused']} from the cache)")
        self.examples = self._example_queries()
        self.before = self._search("dense")
        return {}

    def _example_queries(self) -> list[dict]:
        """The first three eval queries and their relevant passages (the side-by-side examples)."""
        from embed_pipeline.lib.corpus import dataset_for
        from embed_pipeline.lib.labelled import load_labelled_pairs

        if self.config.eval is None:
            return []
        pairs = load_labelled_pairs(self.config.eval, set(dataset_for(self.config).column("passage_id"))).pairs
        relevant = pairs.groupby("query_id")["passage_id"].agg(set)
        return [{"text": r.query, "relevant": relevant[r.query_id]} for r in pairs.drop_duplicates("query_id").head(3).itertuples()]

    def train(self) -> dict:
        from embed_pipeline.console import output
        from embed_pipeline.lib.evaluation import report_markdown
        from embed_pipeline.lib.contracts import read_eval_report

        result = self._execute("training_job")
        report = read_eval_report(output(result, "eval_report").path)
        self.say("eval report:\n" + report_markdown(report))
        judged = report["judged"]["candidate"]
        ci = report["ci"]["recall@10"]
        against = report["judged"]["champion"]
        self.say(f"recall@10 {report[against]['recall@10']:.3f} ({against}) -> {report[judged]['recall@10']:.3f} "
                 f"({judged}); lift {report['lift_over_champion']['recall@10']:+.3f}, 95% CI [{ci['low']:+.3f}, {ci['high']:+.3f}]; "
                 f"gate {'PASSED' if report['gate']['passed'] else 'REFUSED: ' + report['gate']['summary']}")
        self.report = report
        return {"report": report}

    def promote(self) -> dict:
        import dagster as dg

        from embed_pipeline.defs.promotion_sensor import promotion_sensor

        context = dg.build_sensor_context(instance=self.session.instance, resources=self._resources())
        last = self.session.instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
        decision = promotion_sensor.evaluate_tick(context)
        requests = [r for r in decision.run_requests if r.run_key == f"promote-{last.run_id}"]
        if not self.report["gate"]["passed"]:
            if requests:
                raise DemoFailure("the promotion sensor requested a promotion of a candidate the gate refused")
            served = self.session.tracker().alias_version(self.config.registered_model_name)
            self.refused = True
            self.say(f"the promotion sensor skipped the refused candidate ({decision.skip_message or 'no run requested'}); "
                     f"v{served and served.version} keeps serving (on a first demo: the stock model)")
            return {"promoted": False}
        if not requests:
            skipped = decision.skip_message or "no run requested"
            raise DemoFailure(f"the promotion sensor did not promote: {skipped}")
        request = requests[0]
        self._execute("promotion_job", run_config=request.run_config, tags={**request.tags, "dagster/run_key": request.run_key})
        served = self.session.tracker().alias_version(self.config.registered_model_name)
        version = self.report["models"]["candidate"]["version"]
        if served is None or str(served.version) != str(version):
            raise DemoFailure(f"the alias names {served and served.version}, not the promoted v{version}")
        self.say(f"the promotion sensor promoted v{version}: alias `champion` and the served pointer moved")
        return {"promoted": True}

    def serve_champion(self) -> dict:
        counts = self._reembed()
        self.say(f"new champion: {counts['passages']} passages re-embedded in {counts['runs']} run(s) "
                 f"({counts['encoded']} encoded, {counts['reused']} reused from the eval step's cache); served index published")
        after = self._search()
        for example, old, new in zip(self.examples, self.before, after, strict=True):
            self.say(f"query: {example['text']!r}")
            for rank in range(3):
                left, right = (old[rank] if rank < len(old) else None), (new[rank] if rank < len(new) else None)
                mark = lambda hit: ("*" if hit and hit["passage_id"] in example["relevant"] else " ")  # noqa: E731
                self.say(f"  {rank + 1}. stock {mark(left)} {(left or {}).get('title') or (left or {}).get('passage_id', ''):<45.45} | "
                         f"tuned {mark(right)} {(right or {}).get('title') or (right or {}).get('passage_id', '')}")
        self.say("(* = a relevant passage; tuned answers come from the served index in the served mode)")
        return {}

    def change_corpus(self) -> dict:
        corpus = self.config.corpus
        rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
        edited = rows[:3]
        for row in edited:
            row["text"] = row["text"] + " (Edited by the demo: see the change sensor re-embed this passage.)"
        deleted = rows[-1]["_id"]
        added = {"_id": "demo-added-passage", "title": "demo.added",
                 "text": "A passage the demo added: the change sensor embeds it and the served index finds it."}
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1] + [added]), encoding="utf-8")
        self.say(f"edited {len(edited)} passages, added '{added['_id']}', deleted '{deleted}' in {corpus}")
        counts = self._reembed()
        self.say(f"the change sensor requested {counts['runs']} shard run(s): {counts['passages']} passages in those shards, "
                 f"{counts['changed']} changed, {counts['encoded']} encoded, {counts['reused']} reused from the cache")
        from embed_pipeline.lib.indexing import load_index
        from embed_pipeline.lib.promotion import read_served

        ids = set(load_index(read_served(self.config.artifacts_dir)["index_path"]).passage_ids)
        if added["_id"] not in ids or deleted in ids:
            raise DemoFailure("the served index does not reflect the corpus change")
        if counts["encoded"] != len(edited) + 1:
            raise DemoFailure(f"expected {len(edited) + 1} passages encoded, got {counts['encoded']}")
        return {"reembedded": {k: counts[k] for k in ("passages", "changed", "encoded", "reused")}}

    def roll_back(self) -> dict:
        from embed_pipeline.lib.promotion import read_served

        before = read_served(self.config.artifacts_dir)["model_version"]
        config = {"action": "rollback", "requested_by": "embed-pipeline demo", "reason": "the demo's rollback drill"}
        self._execute("promotion_job", run_config={"ops": {"served_model": {"config": config}}})
        after = read_served(self.config.artifacts_dir)["model_version"]
        alias = self.session.tracker().alias_version(self.config.registered_model_name)
        if after == before or str(alias.version) != str(after):
            raise DemoFailure(f"rollback did not move serving (v{before} -> v{after}, alias v{alias.version})")
        counts = self._reembed()  # the restored champion's index predates the corpus change: the sensor catches up
        self.say(f"rolled back: v{before} -> v{after} (alias and served pointer); the previous champion serves again, "
                 f"its index brought up to date ({counts['encoded']} encoded, {counts['reused']} from the cache)")
        return {"rollback": {"from": before, "to": after}}
