"""``align``: run the whole lifecycle, or one stage of it.

    align run [--config RECIPE] [key=value ...]     ingest -> train -> evaluate -> register -> gate -> serve
    align ingest | train | serve                    one stage, same config/overrides
    align train --run-id ID                         resume a stopped run from its last checkpoint
    align evaluate [--run-id ID | --model URI] [--suite NAME ...]
                                                    score a run (default: the newest) or any registered
                                                    version, e.g. --model models:/align@champion
    align promote [--run-id ID | --version N] [--force REASON]
                                                    gate a version (registering a run first) and move
                                                    champion if it passes; --force skips the gate, recorded
    align rollback [--reason TEXT]                  champion back to the previous champion
    align index [--version N]                       embed the filtered dataset into a version's search index
    align search "a red circle" [-k 5]              query the serving endpoint
    align down                                      stop serving and the local Ray head
    align schedule [--config RECIPE] [key=value ...]  serve the retraining deployment on its cron
    align config                                    print the resolved config
    align report [--runs ID ... | --parent ID | --last N] [--out PATH]
                                                    static HTML report comparing runs (default: the newest 10)
    align ui [--port 5000]                          MLflow UI on 127.0.0.1; prints where Prefect and Ray are
    align experiment SPEC [key=value ...]           an experiment's trials as child runs of one parent, compared

Verbs that run stages print a short story (a line per stage, progress bars, the result); everything
the libraries print goes to ``<storage.home>/logs/<verb>-<time>.log`` (``-v``/``--verbose``: all of it
live instead). Environment is prepared here, before Prefect/Ray/MLflow are imported, so nothing happens
at import.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from components.config import AlignConfig, dump_config, load_config
from components.secrets import redact_text


def _prepare_environment(cfg: AlignConfig) -> None:
    """Embedded defaults: Prefect's ephemeral server with its home under the state folder."""
    os.environ.setdefault("PREFECT_HOME", cfg.storage.prefect_home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60's default; keep it on
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "://" not in cfg.storage.home:
        os.makedirs(cfg.storage.home, exist_ok=True)


# Verbs that run stages or talk to Ray/Prefect/MLflow: a console story, library output in a log file.
STAGED_VERBS = ("run", "ingest", "train", "evaluate", "promote", "rollback", "index", "serve", "experiment")
_VERBOSE_HELP = "show everything Ray, Prefect and MLflow print, live, instead of only in the run's log"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="ALIGN vision-language training lifecycle.")
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="verb", required=True)

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        # Also after the verb (`align run -v`); SUPPRESS leaves the global flag's value when absent here.
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
        p.add_argument("--config", default=None, help="YAML recipe (default: configs/embedded.yaml)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100 seed=2")
        p.add_argument("--address", default=None, help="an existing Ray cluster: its GCS host:port, or auto inside it (sets ray.address)")
        return p

    verb("run", "the whole lifecycle on the configured recipe")
    verb("ingest", "ingest and filter the corpus")
    verb("train", "train a model on the filtered dataset (new MLflow run)").add_argument(
        "--run-id", default=None, help="resume this run's training from its last checkpoint instead"
    )
    evaluate = verb("evaluate", "evaluate a trained run or a registered model on the configured suites")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--run-id", default=None, help="MLflow run id (default: the newest)")
    source.add_argument("--model", default=None, help="a registered version: models:/<name>@<alias> or models:/<name>/<N>")
    evaluate.add_argument("--suite", action="append", default=None, help="suite name from eval.suites (repeatable; default: all)")
    promote = verb("promote", "gate a registered version (or a run, registered first) and promote it if it passes")
    which = promote.add_mutually_exclusive_group()
    which.add_argument("--run-id", default=None, help="register this run's model, then gate it (default: the newest run)")
    which.add_argument("--version", default=None, help="an already registered version of registry.model_name")
    promote.add_argument("--force", default="", metavar="REASON", help="promote without the gate; the reason is recorded")
    promote.add_argument("--no-serve", action="store_true", help="move the alias only; do not redeploy serving")
    rollback = verb("rollback", "move champion back to the previous champion (recorded) and redeploy serving")
    rollback.add_argument("--reason", default="", help="why; recorded in the registry")
    rollback.add_argument("--no-serve", action="store_true", help="move the alias only; do not redeploy serving")
    verb("index", "embed the filtered dataset with a version (default: the champion) into its search index").add_argument(
        "--version", default=None, help="registered version (default: the champion)"
    )
    verb("serve", "deploy the champion on Ray Serve")
    verb("down", "stop serving and the local Ray head")
    verb("schedule", "serve the retraining deployment on orchestration.schedule_cron until Ctrl-C").add_argument(
        "--prefect-port", type=int, default=4200, help="local Prefect server's port, started when PREFECT_API_URL is unset"
    )
    verb("config", "print the resolved config")
    experiment = sub.add_parser("experiment", help="run an experiment spec's trials as MLflow child runs of one parent")
    experiment.add_argument("spec", help="experiment YAML (see configs/experiments/)")
    experiment.add_argument("overrides", nargs="*", help="key=value overrides for every trial, e.g. storage.home=/tmp/x")
    experiment.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    report = verb("report", "write a static HTML report comparing runs: params, metrics, loss curves, R@K, gate, versions")
    chosen = report.add_mutually_exclusive_group()
    chosen.add_argument("--runs", nargs="+", default=None, metavar="ID", help="these MLflow run ids, in this order")
    chosen.add_argument("--parent", default=None, metavar="RUN_ID", help="the child runs of this parent run")
    chosen.add_argument("--last", type=int, default=None, metavar="N", help="the newest N runs of the experiment (default: 10)")
    report.add_argument("--out", default=None, help="HTML file to write (default: <storage.home>/reports/report-<time>.html)")
    verb("ui", "start the MLflow UI on 127.0.0.1 (until Ctrl-C) and print where the Prefect and Ray dashboards are").add_argument(
        "--port", type=int, default=5000, help="MLflow UI port (default: 5000)"
    )
    search = sub.add_parser("search", help="text -> image search against the serving endpoint")
    search.add_argument("text")
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--url", default=None, help="endpoint (default: from the config)")
    search.add_argument("--config", default=None)
    return parser


def _json(payload: dict) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str)


def _print(payload: dict) -> None:
    print(_json(payload))


def _summary(result: dict, seconds: float, log_path: str | None = None) -> str:
    report = result["data_report"]
    lines = [
        f"\n=== ALIGN lifecycle finished in {seconds:.0f} s ===",
        f"data:    {report['rows_in']} pairs in, {report['rows_kept']} kept, {report['rows_rejected']} rejected",
        "metrics:",
    ]
    lines += [f"  {name:45s} {value:.4f}" for name, value in sorted(result["metrics"].items())]
    gate = result["gate"]
    verdict = "passed -> champion" if gate["passed"] else "failed: " + "; ".join(gate["reasons"])
    lines.append(f"model:   {result['model_name']} version {result['model_version']} (run {result['run_id']}), gate {verdict}")
    if result["serving_url"]:
        lines.append(f"serving: {result['serving_url']}  (POST /v1/search {{\"text\": ..., \"k\": 5}}; GET /healthz)")
    elif gate["champion_version"]:
        lines.append(f"serving: unchanged; champion version {gate['champion_version']} keeps serving")
    else:
        lines.append("serving: nothing to serve yet (no model has passed the gate)")
    if log_path:
        lines.append(f"log:     {log_path}")
    return "\n".join(lines)


def _registry_verb(args: argparse.Namespace, cfg: AlignConfig, config: dict, console) -> int:
    from components.runtime.tracking import latest_run_id, prepare_tracking
    from flows import stages

    prepare_tracking(cfg.storage)
    if args.verb == "rollback":
        console.result(_json(stages.rollback_flow(config, args.reason, serve=not args.no_serve)))
        return 0
    if args.verb == "evaluate":
        if args.model:
            console.result(_json(stages.evaluate_flow(config, model_uri=args.model, suites=args.suite)))
            return 0
        run_id = args.run_id or latest_run_id(cfg.storage, cfg.registry.experiment, "train/loss")
        console.result(_json(stages.evaluate_flow(config, run_id=run_id, suites=args.suite)))
        return 0
    run_id = None
    if args.version is None:
        run_id = args.run_id or latest_run_id(cfg.storage, cfg.registry.experiment, "train/loss")
    result = stages.promote_flow(config, run_id, args.version, args.force, serve=not args.no_serve)
    console.result(_json(result))
    return 0 if result["gate"]["passed"] else 1


def _report_verb(args: argparse.Namespace, cfg: AlignConfig) -> int:
    from components.report.collect import DEFAULT_LAST, RunSelection
    from components.report.render import default_report_path, write_report

    out = args.out or default_report_path(cfg.storage.home)
    try:  # a malformed run id or --last, or no such runs: one line saying which, not a traceback
        selection = RunSelection(tuple(args.runs or ()), args.parent or "", DEFAULT_LAST if args.last is None else args.last)
    except ValueError as err:
        print(f"align report: {err}", file=sys.stderr)
        return 1
    try:
        path = write_report(cfg.storage.tracking_uri, cfg.registry.experiment, selection, out)
    except LookupError as err:
        print(f"align report: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _experiment_verb(spec, console) -> int:
    from components.experiments.compare import to_markdown
    from flows.experiment import run_experiment

    result = run_experiment(spec)
    parent = result["parent_run_id"]
    # The report must read the same state folder: repeat the storage overrides the study was given.
    storage = [override for override in spec.overrides if override.startswith("storage.")]
    console.result("\n".join([
        to_markdown(result["table"], f"Experiment {spec.name}"),
        f"parent run: {parent}",
        "report: " + redact_text(" ".join(["align report --parent", parent, *storage])),  # no password shown
    ]))
    return 0


def _staged_config(args: argparse.Namespace):
    """The verb's config (an experiment's: its first trial's, for the state folder) and the spec, if any."""
    if args.verb == "experiment":
        from components.experiments.spec import expand, load_spec, trial_config

        spec = load_spec(args.spec, list(args.overrides))
        return trial_config(spec, expand(spec)[0]), spec
    return load_config(args.config, getattr(args, "overrides", [])), None


def _staged_verb(args: argparse.Namespace, cfg: AlignConfig, spec, console) -> int:
    if args.verb == "experiment":
        return _experiment_verb(spec, console)
    config = cfg.model_dump()
    started = time.monotonic()
    if args.verb == "run":
        from flows.lifecycle import lifecycle

        result = lifecycle(config)
        console.result(_summary(result, time.monotonic() - started, console.log_path))
        return 0
    if args.verb in ("evaluate", "promote", "rollback"):
        return _registry_verb(args, cfg, config, console)
    from flows import stages

    if args.verb == "index":
        console.result(_json(stages.index_flow(config, args.version)))
    elif args.verb == "train" and args.run_id:
        console.result(_json(stages.train_flow(config, run_id=args.run_id)))
    else:
        console.result(_json({"ingest": stages.ingest_flow, "train": stages.train_flow, "serve": stages.serve_flow}[args.verb](config)))
    return 0


def _staged(args: argparse.Namespace, argv: list[str] | None) -> int:
    from align_cli.session import config_failure, run_staged

    try:
        cfg, spec = _staged_config(args)
    except Exception as error:  # noqa: BLE001 -- explained on the console; nothing has run
        return config_failure(args.verb, error, args.verbose)
    _prepare_environment(cfg)
    return run_staged(
        args.verb, cfg.storage.home, lambda console: _staged_verb(args, cfg, spec, console),
        verbose=args.verbose, tracking_uri=cfg.storage.tracking_uri, command=list(sys.argv[1:] if argv is None else argv),
        # When `align` is this process, fds 1/2 stay on the log until it exits: Ray's log forwarding
        # and Prefect's exit hooks still write after the verb returns. In-process callers get them back.
        keep_redirect=argv is None, announce_log=args.verb != "run",  # run's summary names the log
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "address", None):  # one more override, so it goes wherever the overrides go
        args.overrides = [*args.overrides, f"ray.address={args.address}"]
    if args.verb in STAGED_VERBS:
        return _staged(args, argv)
    # Data and server verbs print their own result; the libraries' INFO chatter (MLflow creating its tables,
    # one line per Prefect API call) only with -v. The platform's own INFO lines stay.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for ours in ("components", "flows"):
        logging.getLogger(ours).setLevel(logging.INFO)
    if not args.verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level on import
        for chatty in ("mlflow", "httpx", "prefect"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    cfg = load_config(args.config, getattr(args, "overrides", []))
    _prepare_environment(cfg)

    if args.verb == "config":
        print(redact_text(dump_config(cfg)))  # a store URI's password reads ***
        return 0
    if args.verb == "search":
        import httpx

        from components.serving.client import search
        from components.serving.deploy import endpoint_url

        url = args.url or endpoint_url(cfg.serve)
        try:
            _print(search(url, args.text, args.k, api_key_env=cfg.serve.api_key_env))
        except httpx.TransportError as error:
            print(f"align search: nothing answers at {url} ({error}). Start serving with `make run` or "
                  "`align serve`, or name the endpoint with --url.", file=sys.stderr)
            return 1
        except RuntimeError as error:  # SearchError, or serve.api_key_env naming an unset variable
            print(f"align search: {error}", file=sys.stderr)
            return 1
        return 0
    if args.verb == "report":
        return _report_verb(args, cfg)
    if args.verb == "ui":
        from components.report.ui import run_ui

        return run_ui(cfg, args.port)
    if args.verb == "schedule":
        from components.config import DEFAULT_RECIPE
        from flows.schedule import serve_retraining

        serve_retraining(cfg, str(args.config or DEFAULT_RECIPE), list(args.overrides), args.prefect_port)
        return 0
    from components.runtime.ray_cluster import stop_local_head

    stopped = stop_local_head(cfg.storage.home)  # down
    print("stopped the local Ray head (and with it, serving)" if stopped else "nothing was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
