"""Helpers of bench/gpu_smoke.sh: where its state is, the run id a verb printed, and the markdown report.

    gpu_smoke_report.py probe --config RECIPE [key=value ...]   # JSON: state folder, tracking URI, Ray head
    gpu_smoke_report.py run-id FILE                             # the run id in an `align train` result
    gpu_smoke_report.py write --work DIR --out FILE --mode gpu|cpu --config RECIPE [key=value ...]

``write`` reads what the smoke run left in its work folder (``steps.tsv``: one line per step with its
exit status and wall time; ``<step>.out``: each verb's stdout, i.e. its JSON result; ``<step>.err``: the
console story; the MFU bench's JSON) and the training run's metric history from MLflow, and writes one
markdown page. Everything missing (a failed or skipped step) is said so in the page instead of failing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUN_ID = re.compile(r'"run_id"\s*:\s*"([0-9a-f]{32})"')
LOG_LINE = re.compile(r"^\s*log:\s+(\S+\.log)\s*$", re.M)
STEP_TITLES = {
    "ingest": "`align ingest`",
    "train": "`align train`",
    "resume": "`align train --run-id` (resume)",
    "evaluate": "`align evaluate --run-id`",
    "mfu_bench": "`bench/gpu_train_throughput.py`",
    "mfu_bench_retry": "`bench/gpu_train_throughput.py` at half the batch (the first ran out of memory)",
}
SKIPPED = {"skipped", "no-time"}


def _config(recipe: str, overrides: list[str]):
    from components.config import load_config

    return load_config(recipe, overrides)


def probe(recipe: str, overrides: list[str]) -> dict:
    """The resolved state folder and tracking URI, and whether that folder's local Ray head answers now."""
    cfg = _config(recipe, overrides)
    running = False
    if cfg.ray.address == "local" and "://" not in cfg.storage.home:  # the head `align` starts on demand
        from components.runtime.local_server import listening
        from components.runtime.ray_cluster import read_head_state

        try:
            host, port = (read_head_state(cfg.storage.home) or {})["address"].rsplit(":", 1)
            running = listening(host, int(port))
        except (OSError, ValueError, KeyError):
            running = False
    return {"home": cfg.storage.home, "tracking_uri": cfg.storage.tracking_uri, "ray_address": cfg.ray.address,
            "experiment": cfg.registry.experiment, "local_head_running": running}


def read_json(path: Path) -> dict | None:
    """A verb's JSON result: its stdout is that JSON alone, unless something printed around it (``-v``),
    so the last JSON object that starts a line; None when the file is missing or holds none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    decoder, found = json.JSONDecoder(), None
    for start in re.finditer(r"^\{", text, re.M):
        try:
            value, _ = decoder.raw_decode(text, start.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            found = value
    return found


def run_id_from(path: Path) -> str:
    """The MLflow run id of an ``align train`` result (stdout): its JSON's run_id, else the first one quoted."""
    result = read_json(path)
    if result and isinstance(result.get("run_id"), str) and result["run_id"]:
        return result["run_id"]
    try:
        found = RUN_ID.search(path.read_text())
    except OSError:
        found = None
    return found.group(1) if found else ""


# ---------------------------------------------------------------- collecting


def read_steps(work: Path) -> list[dict]:
    steps = []
    path = work / "steps.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                steps.append({"name": parts[0], "status": parts[1], "seconds": float(parts[2] or 0),
                              "command": parts[3] if len(parts) > 3 else "",
                              "start": _float(parts[4]) if len(parts) > 4 else None,
                              "end": _float(parts[5]) if len(parts) > 5 else None})
    return steps


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_gpu_samples(path: Path) -> list[tuple[float, float, float, float]]:
    """``nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total -l 1`` lines (GPU 0 only)
    as (epoch seconds, utilisation %, MiB used, MiB total); unreadable lines are skipped."""
    from datetime import datetime

    samples, seen = [], set()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            when = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local time, as `date +%s`
            util, used, total = float(parts[1]), float(parts[2]), float(parts[3])
        except ValueError:
            continue
        if when in seen:  # several GPUs print one line each with the same timestamp: keep the first
            continue
        seen.add(when)
        samples.append((when, util, used, total))
    return samples


def gpu_usage(samples: list, start: float | None, end: float | None) -> dict | None:
    """Mean and max utilisation and max memory of the samples taken while a step ran."""
    if start is None or end is None:
        return None
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return None
    utils = [s[1] for s in inside]
    return {"util_mean": statistics.fmean(utils), "util_max": max(utils), "mem_max_mib": max(s[2] for s in inside),
            "mem_total_mib": inside[0][3], "samples": len(inside)}


def device_info(mode: str) -> dict:
    info: dict = {"mode": mode, "cpu_cores": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda or ""
        if mode == "gpu" and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["name"] = torch.cuda.get_device_name(0)
            info["memory"] = f"{props.total_memory / 2**30:.1f} GiB"
            info["bf16"] = torch.cuda.is_bf16_supported()
    except Exception as error:  # noqa: BLE001 -- the page says what could not be read
        info["torch"] = f"not importable ({error})"
    if mode == "gpu" and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
            if out:
                name, memory, driver = [part.strip() for part in out[0].split(",")[:3]]
                info |= {"name": name, "memory": memory, "driver": driver, "gpus_visible": len(out)}
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if mode != "gpu":
        info["name"] = "cpu"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mlflow_history(tracking_uri: str, run_id: str) -> dict:
    """Every metric's history of the run as {name: [(step, value), ...]}, its params and tags."""
    if not run_id:
        return {}
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    history = {}
    for name in sorted(run.data.metrics):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        history[name] = points
    return {"metrics": history, "params": dict(run.data.params), "tags": dict(run.data.tags),
            "status": run.info.status, "experiment_id": run.info.experiment_id}


def collect(work: Path, mode: str, recipe: str, overrides: list[str]) -> dict:
    data: dict = {"steps": read_steps(work), "device": device_info(mode), "mode": mode, "recipe": recipe,
                  "overrides": overrides, "errors": []}
    samples = read_gpu_samples(work / "gpu-samples.csv")
    for step in data["steps"]:
        step["gpu"] = gpu_usage(samples, step.get("start"), step.get("end"))
    try:
        cfg = _config(recipe, overrides)
        data["home"], data["tracking_uri"] = cfg.storage.home, cfg.storage.tracking_uri
    except Exception as error:  # noqa: BLE001
        data["errors"].append(f"config: {error}")
        cfg = None
    for name in ("ingest", "train", "resume", "evaluate"):
        data[name] = read_json(work / f"{name}.out")
    data["run_id"] = run_id_from(work / "train.out")
    data["bench"] = read_json(work / "gpu_train_throughput.json")
    data["mlflow"] = {}
    if cfg is not None and data["run_id"]:
        try:
            data["mlflow"] = mlflow_history(cfg.storage.tracking_uri, data["run_id"])
        except Exception as error:  # noqa: BLE001
            data["errors"].append(f"MLflow history of run {data['run_id']}: {error}")
    data["failures"] = {}
    for step in data["steps"]:
        if step["status"] not in ("0", *SKIPPED):
            data["failures"][step["name"]] = _failure_text(work, step["name"])
    return data


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _failure_text(work: Path, name: str) -> str:
    parts = []
    console = _tail(work / f"{name}.err", 40)
    if console:
        parts.append(f"console (last lines of {name}.err):\n{console}")
    try:
        logs = LOG_LINE.findall((work / f"{name}.err").read_text(errors="replace"))
    except OSError:
        logs = []
    if not logs:  # a failure names its log on a "Log: <path> (...)" line
        try:
            logs = re.findall(r"Log:\s+(\S+\.log)", (work / f"{name}.err").read_text(errors="replace"))
        except OSError:
            logs = []
    if logs and Path(logs[-1]).is_file():
        text = Path(logs[-1]).read_text(errors="replace")
        start = text.rfind("Traceback (most recent call last)")
        if start != -1:  # the verb's own traceback, written to its log when it failed
            lines = text[start:].splitlines()[:80]
            parts.append(f"log {logs[-1]} (from its last traceback):\n" + "\n".join(lines))
        else:
            parts.append(f"log {logs[-1]} (last 60 lines):\n{_tail(Path(logs[-1]), 60)}")
    return "\n\n".join(parts)


# ---------------------------------------------------------------- rendering


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.4g}"
        if abs(value) >= 100:  # samples/s, seconds: a tenth is plenty
            digits = min(digits, 1)
        text = f"{value:,.{digits}f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    return str(value)


def _series(points: list, digits: int = 4) -> str:
    return ", ".join(f"{int(step)}: {_num(value, digits)}" for step, value in points) or "n/a"


def _device_line(device: dict) -> str:
    if device.get("mode") == "gpu":
        extra = ", ".join(x for x in (device.get("memory", ""), f"driver {device['driver']}" if device.get("driver") else "",
                                      f"{device['gpus_visible']} visible" if device.get("gpus_visible") else "") if x)
        return f"{device.get('name', 'unknown GPU')} ({extra}); host {device.get('cpu_cores')} CPU cores ({device.get('cpu_model')})"
    return f"cpu ({device.get('cpu_model')}, {device.get('cpu_cores')} cores)"


def render(data: dict, date: str, command: str) -> str:
    device, steps = data["device"], data["steps"]
    failed = [s["name"] for s in steps if s["status"] not in ("0", *SKIPPED)]
    skipped = [s["name"] for s in steps if s["status"] in SKIPPED]
    total = sum(s["seconds"] for s in steps)
    verdict = "every step passed" if not failed and not skipped else (
        (f"failed: {', '.join(failed)}" if failed else "") + ("; " if failed and skipped else "")
        + (f"skipped: {', '.join(skipped)}" if skipped else ""))
    title = "GPU smoke run" if data["mode"] == "gpu" else "GPU smoke run, CPU fallback (--cpu)"
    lines = [
        f"# {title}, {date}",
        "",
        f"- **device**: {_device_line(device)}",
        f"- **date**: {date} (report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')})",
        f"- **torch**: {device.get('torch', 'n/a')}" + (f" (CUDA {device['torch_cuda']})" if device.get("torch_cuda") else "")
        + f", Python {device.get('python')}",
        f"- **command**: `{command}`",
        f"- **recipe**: `{data['recipe']}` with overrides `{' '.join(data['overrides'])}`",
        f"- **state folder**: `{data.get('home', 'n/a')}` (MLflow: `{data.get('tracking_uri', 'n/a')}`)",
        f"- **git commit**: {data.get('mlflow', {}).get('tags', {}).get('align.git_commit', 'n/a')}",
        f"- **verdict**: {verdict}; steps took {total:.0f} s in all",
        "",
        "## Steps",
        "",
    ]
    sampled = any(step.get("gpu") for step in steps)
    gpu_head = " GPU util mean / max, memory max (nvidia-smi, 1 s) |" if sampled else ""
    lines += [f"| step | what | exit status | wall time |{gpu_head}", "|---|---|---|---|" + ("---|" if sampled else "")]
    for step in steps:
        status = {"0": "0 (ok)", "124": "124 (timed out)", "130": "130 (interrupted)", "skipped": "skipped (an earlier step failed)",
                  "no-time": "skipped (out of time)"}.get(step["status"], step["status"])
        row = f"| {step['name']} | {STEP_TITLES.get(step['name'], step['name'])} | {status} | {step['seconds']:.1f} s |"
        if sampled:
            gpu = step.get("gpu")
            row += (f" {gpu['util_mean']:.0f}% / {gpu['util_max']:.0f}%, {gpu['mem_max_mib'] / 1024:.1f} of "
                    f"{gpu['mem_total_mib'] / 1024:.1f} GiB |" if gpu else " n/a |")
        lines.append(row)
    lines += ["", *_ingest_section(data), *_training_section(data), *_resume_section(data), *_evaluation_section(data),
              *_bench_section(data)]
    commands = [step for step in steps if step["command"] and step["status"] not in SKIPPED]
    if commands:
        lines += ["## Commands", "", "Run in the repository root with `ALIGN_HOME` set to the state folder:", "", "```bash"]
        lines += [step["command"] for step in commands]
        lines += ["```", ""]
    if data["failures"] or data["errors"]:
        lines += ["## Failures", ""]
        for name, text in data["failures"].items():
            lines += [f"### {name}", "", "```text", text or "(no output captured)", "```", ""]
        for error in data["errors"]:
            lines += [f"- {error}"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _ingest_section(data: dict) -> list[str]:
    ingest = data.get("ingest")
    lines = ["## Data (`align ingest`)", ""]
    if not ingest:
        return [*lines, "No result: the step failed or did not run.", ""]
    report = ingest.get("report", {})
    seconds = report.get("seconds", {})
    lines += [f"- pairs: {_num(report.get('rows_in'))} in, {_num(report.get('rows_kept'))} kept, "
              f"{_num(report.get('rows_rejected'))} rejected" + (" (cached)" if ingest.get("cached") else ""),
              "- phases: " + (", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) or "n/a"), ""]
    return lines


def _stats(points: list) -> tuple:
    values = [v for _, v in points]
    if not values:
        return None, None, None
    rest = values[1:] or values  # the first window holds start-up (first-step compilation, cudnn autotuning)
    return values[0], statistics.median(rest), values[-1]


def _training_section(data: dict) -> list[str]:
    lines = ["## Training (`align train`, then resumed)", ""]
    history = data.get("mlflow", {}).get("metrics", {})
    train, run_id = data.get("train"), data.get("run_id")
    if not run_id:
        return [*lines, "No run: the training step failed before it printed a result.", ""]
    params = data.get("mlflow", {}).get("params", {})
    lines.append(f"- run `{run_id}` ({data.get('mlflow', {}).get('status', 'status n/a')}); "
                 f"precision {params.get('train.precision', 'n/a')}, global batch {params.get('train.global_batch_size', 'n/a')}, "
                 f"{params.get('train.world_size', 'n/a')} worker(s), GPU {params.get('train.use_gpu', 'n/a')}, "
                 f"image tower {params.get('model.image_tower', 'n/a')}")
    loss = history.get("train/loss", [])
    if loss:
        lines.append(f"- train/loss: {_num(loss[0][1])} at the first logged step ({int(loss[0][0])}), "
                     f"{_num(loss[-1][1])} at the last ({int(loss[-1][0])})")
    rows = []
    for name, label in (("train/samples_per_s", "samples/s"), ("train/data_wait_fraction", "data wait fraction"),
                        ("train/step_time", "step time (s)"), ("train/data_time", "data time per step (s)")):
        first, median, last = _stats(history.get(name, []))
        if first is not None:
            rows.append(f"| {label} | {_num(first)} | {_num(median)} | {_num(last)} |")
    if rows:
        lines += ["", "| per logged window | first | median of the rest | last |", "|---|---|---|---|", *rows, ""]
    for name in ("val/text_to_image/R_at_1", "val/image_to_text/R_at_1", "val/mean_recall", "train/temperature", "train/loss"):
        if history.get(name):
            lines.append(f"- {name} by step: {_series(history[name])}")
    system = {name: points for name, points in history.items() if name.startswith("system/") and "gpu" in name}
    if system:
        lines.append("- GPU system metrics (max over the run): " + ", ".join(
            f"{name.removeprefix('system/')} {_num(max(v for _, v in points), 1)}" for name, points in sorted(system.items())))
    if train and train.get("metrics"):
        shown = {k: v for k, v in train["metrics"].items() if k in ("step", "train/loss", "train/samples_per_s", "attempt_start_step")}
        lines.append(f"- first `align train` ended with: " + ", ".join(f"{k} {_num(v)}" for k, v in shown.items()))
    lines.append("")
    return lines


def _resume_section(data: dict) -> list[str]:
    lines = ["## Resume (`align train --run-id`)", ""]
    resume = data.get("resume")
    if not resume:
        return [*lines, "No result: the resume step failed or did not run.", ""]
    metrics = resume.get("metrics", {})
    start, end = metrics.get("attempt_start_step"), metrics.get("step")
    same = resume.get("run_id") == data.get("run_id")
    lines.append(f"- resumed from step {_num(_int(start))} → {_num(_int(end))} "
                 f"(run `{resume.get('run_id', 'n/a')}`, {'the same run' if same else 'NOT the first run'})")
    if "train/loss" in metrics:
        lines.append(f"- last window: train/loss {_num(metrics['train/loss'])}, "
                     f"samples/s {_num(metrics.get('train/samples_per_s'))}, data wait {_num(metrics.get('train/data_wait_fraction'))}")
    lines.append("")
    return lines


def _int(value):
    return int(value) if isinstance(value, (int, float)) else value


def _evaluation_section(data: dict) -> list[str]:
    lines = ["## Evaluation (`align evaluate --run-id`)", ""]
    evaluation = data.get("evaluate")
    if not evaluation or not evaluation.get("metrics"):
        return [*lines, "No result: the evaluation step failed or did not run.", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_num(value)} |" for name, value in sorted(evaluation["metrics"].items())]
    return [*lines, ""]


BENCH_FIELDS = ("device", "image_tower", "image_size", "text_layers", "text_hidden", "tokens", "batch", "gradient_checkpointing",
                "optimizer", "timed_steps", "warmup_steps", "samples_per_s", "step_time_s", "flops_per_step",
                "flops_counted_at_batch", "achieved_tflops", "peak_tflops", "mfu", "peak_memory_gib", "smoke")


def _bench_section(data: dict) -> list[str]:
    lines = ["## MFU bench (`bench/gpu_train_throughput.py`)", ""]
    bench = data.get("bench")
    if not bench:
        return [*lines, "No result: the bench failed or did not run.", ""]
    lines += ["| field | value |", "|---|---|"]
    lines += [f"| {name} | {_num(bench.get(name))} |" for name in BENCH_FIELDS if name in bench]
    lines += ["", "```json", json.dumps(bench, indent=2), "```", ""]
    return lines


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--config", required=True)
    p.add_argument("--field", default=None, help="print only this field (booleans as true/false)")
    p.add_argument("overrides", nargs="*")
    r = sub.add_parser("run-id")
    r.add_argument("file")
    w = sub.add_parser("write")
    w.add_argument("--work", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    w.add_argument("--config", required=True)
    w.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    w.add_argument("--command-line", default="bash bench/gpu_smoke.sh")
    w.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "probe":
        try:
            found = probe(args.config, args.overrides)
        except Exception as error:  # noqa: BLE001 -- a recipe or override that does not load, in one line
            print(f"gpu_smoke_report: the recipe {args.config} with these overrides does not load: {error}", file=sys.stderr)
            return 2
        value = found if args.field is None else found[args.field]
        print(json.dumps(value) if not isinstance(value, str) else value)
    elif args.command == "run-id":
        run_id = run_id_from(Path(args.file))
        if not run_id:
            print(f"gpu_smoke_report: no run id in {args.file}", file=sys.stderr)
            return 1
        print(run_id)
    else:
        data = collect(Path(args.work), args.mode, args.config, args.overrides)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(data, args.date, args.command_line))
        (Path(args.work) / "report-data.json").write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
