"""The full load test of ``fapm serve`` (docs/serve.md): clients and server on this machine,
over loopback.

1. in-process baseline: the same images, decoded from the same bytes, scored by
   ``predict_images`` one at a time (batch 1) and in batches of ``--max-batch``, with the same
   torch thread count as the server;
2. ``fapm predict`` on the image folder: the decisions the service must give;
3. ``fapm serve`` in a subprocess, ``--max-batch 1`` (no micro-batching), then ``--max-batch N``
   with a ``--window-ms`` window: ``--clients`` closed-loop clients x ``--requests`` each;
4. with ``--swap-model``: the same load with micro-batching, and ``POST /model`` swapping in that
   file once a third of the requests are answered: failures, and whether each answer's raw
   score is the one of the model it names.

On a machine that other jobs share, the in-process rates are measured before the runs and again
after them; the ratios use their mean. Prints a Markdown table, the load average before and after,
and writes ``--output``/serve_bench.json.

    python tools/serve_bench.py --model runs/serve_bench/bottle/model.safetensors \\
        --images ../shared/data/mvtec_ad_256/bottle/test --swap-model runs/serve_bench/bottle_v2.safetensors \\
        --clients 4 --requests 500 --threads 1 --output runs/serve_bench
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fapm_lib.cli import main as cli  # noqa: E402
from fapm_lib.data.folders import list_images  # noqa: E402
from fapm_lib.decisions.results import predict_images  # noqa: E402
from fapm_lib.service.load_client import LoadReport, run_load  # noqa: E402
from fapm_lib.service.model_slot import load_model  # noqa: E402
from fapm_lib.service.request_body import decode_image  # noqa: E402


def in_process(model_file: Path, bodies: list[bytes], count: int, batch: int) -> float:
    """Images per second of decode + ``predict_images`` over ``count`` requests, ``batch`` at a time."""
    detector = load_model(model_file).detector
    predict_images(detector, [decode_image(bodies[0])])  # warm-up
    start = time.perf_counter()
    for first in range(0, count, batch):
        images = [decode_image(bodies[i % len(bodies)]) for i in range(first, min(first + batch, count))]
        predict_images(detector, images)
    return count / (time.perf_counter() - start)


def model_scores(model_file: Path, bodies: list[bytes]) -> tuple[str, list[float], list[str]]:
    """The model's id, and the raw score and decision of each body scored alone."""
    loaded = load_model(model_file)
    results = [predict_images(loaded.detector, [decode_image(b)])[0] for b in bodies]
    return loaded.id, [r.raw_score for r in results], [r.decision for r in results]


def predict_decisions(model_file: Path, paths: list[Path], out: Path) -> dict[str, str]:
    """``fapm predict``'s decision per path."""
    code = cli.main(["predict", "--model", str(model_file), *map(str, paths), "--output", str(out), "--no-progress"])
    assert code == 0, "fapm predict failed"
    with open(out / "scores.csv", newline="") as fh:
        return {row["path"]: row["decision"] for row in csv.DictReader(fh)}


class Server:
    """``fapm serve`` in a subprocess on a free port."""

    def __init__(self, model_file: Path, threads: int, max_batch: int, window_ms: float) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fapm_lib", "serve", "--model", str(model_file), "--port", "0", "--threads",
             str(threads), "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms), "--queue-size",
             "256"], env=env, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if " on http" not in line:
            raise RuntimeError(f"fapm serve did not start: {line!r}")
        self.url = line.split(" on ", 1)[1].split("/ (", 1)[0]

    def post_json(self, path: str, values: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(values).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as answer:
            return json.load(answer)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def summary(report: LoadReport, baseline: float, decisions: list[str]) -> dict:
    wrong = sum(a.json["decision"] != decisions[a.body] for a in report.ok)
    return {"requests": report.sent, "ok": len(report.ok), "errors": report.errors, "lost": report.lost,
            "decisions_differing_from_fapm_predict": wrong, "throughput": report.throughput(),
            "vs_in_process_batch_1": report.throughput() / baseline, "p50_ms": report.percentile_ms(0.5),
            "p99_ms": report.percentile_ms(0.99), "mean_batch": report.mean_batch(), "wall_s": report.wall_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--images", required=True, type=Path, help="a folder of test images (any depth)")
    parser.add_argument("--swap-model", type=Path, help="a second model file to swap in under load")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=500, help="requests per client")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--output", type=Path, default=Path("runs/serve_bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    paths = list_images(args.images)
    bodies = [p.read_bytes() for p in paths]
    total = args.clients * args.requests
    load = {"before": os.getloadavg()}
    print(f"{len(paths)} images; {args.clients} clients x {args.requests} requests; {args.threads} torch thread(s); "
          f"load average {load['before'][0]:.2f}", flush=True)
    reference = predict_decisions(args.model, paths, args.output / "predict")
    decisions = [reference[str(p)] for p in paths]
    model_id, raw, alone = model_scores(args.model, bodies)
    assert alone == decisions, "predict_images one by one differs from fapm predict"
    results: dict = {"model": model_id, "images": len(paths)}
    results["in_process_batch_1"] = in_process(args.model, bodies, min(total, 1000), 1)
    results[f"in_process_batch_{args.max_batch}"] = in_process(args.model, bodies, min(total, 1000), args.max_batch)
    print(f"in process: {results['in_process_batch_1']:.1f} images/s at batch 1, "
          f"{results[f'in_process_batch_{args.max_batch}']:.1f} at batch {args.max_batch}", flush=True)
    for name, max_batch, window in (("serve_batch_1", 1, 0.0), (f"serve_micro_batch_{args.max_batch}",
                                                                 args.max_batch, args.window_ms)):
        server = Server(args.model, args.threads, max_batch, window)
        try:
            report = run_load(server.url, bodies, args.clients, args.requests)
        finally:
            server.stop()
        results[name] = summary(report, results["in_process_batch_1"], decisions)
        print(name, json.dumps(results[name]), flush=True)
    if args.swap_model:
        new_id, new_raw, _ = model_scores(args.swap_model, bodies)
        expected = {model_id: raw, new_id: new_raw}
        server = Server(args.model, args.threads, args.max_batch, args.window_ms)
        swap_answer: dict = {}

        def answered() -> int:
            with urllib.request.urlopen(server.url + "/metrics", timeout=30) as answer:
                text = answer.read().decode()
            return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("fapm_decisions_total"))

        def swap() -> None:
            while answered() < total // 3:
                time.sleep(0.05)
            swap_answer.update(server.post_json("/model", {"path": str(args.swap_model)}))

        try:
            report = run_load(server.url, bodies, args.clients, args.requests, during=swap)
        finally:
            server.stop()
        named = [a.json["model"]["id"] for a in report.ok]
        mismatched = sum(abs(a.json["raw_score"] - expected[a.json["model"]["id"]][a.body]) > 1e-3 *
                         abs(expected[a.json["model"]["id"]][a.body]) for a in report.ok)
        late_old = sum(a.json["model"]["id"] != new_id for a in report.ok if a.sent_at > report.meta["during_end"])
        results["swap_under_load"] = {**summary(report, results["in_process_batch_1"], decisions),
                                      "old_id": model_id, "new_id": new_id, "answers_old": named.count(model_id),
                                      "answers_new": named.count(new_id),
                                      "raw_score_not_that_of_the_named_model": mismatched,
                                      "sent_after_the_swap_but_named_old": late_old,
                                      "swap_seconds": report.meta["during_end"] - report.meta["during_start"]}
        results["swap_under_load"].pop("decisions_differing_from_fapm_predict")
        print("swap_under_load", json.dumps(results["swap_under_load"]), flush=True)
    before = (results["in_process_batch_1"], results[f"in_process_batch_{args.max_batch}"])
    after = (in_process(args.model, bodies, min(total, 1000), 1),
             in_process(args.model, bodies, min(total, 1000), args.max_batch))
    results["in_process_before_after"] = {"batch_1": [before[0], after[0]],
                                          f"batch_{args.max_batch}": [before[1], after[1]]}
    results["in_process_batch_1"] = (before[0] + after[0]) / 2
    results[f"in_process_batch_{args.max_batch}"] = (before[1] + after[1]) / 2
    for name in ("serve_batch_1", f"serve_micro_batch_{args.max_batch}", "swap_under_load"):
        if name in results:
            results[name]["vs_in_process_batch_1"] = results[name]["throughput"] / results["in_process_batch_1"]
    load["after"] = os.getloadavg()
    results["load_average"] = load
    results["cpu"] = f"{os.cpu_count()} logical CPUs"
    (args.output / "serve_bench.json").write_text(json.dumps(results, indent=1))
    print_table(results, args)
    return 0


def print_table(results: dict, args: argparse.Namespace) -> None:
    base = results["in_process_batch_1"]
    print("\n| run | images/s | vs in-process batch 1 | p50 ms | p99 ms | mean batch | errors | lost | "
          "decisions != fapm predict |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| in process, batch 1 | {base:.1f} | 1 |  |  | 1 |  |  |  |")
    key = f"in_process_batch_{args.max_batch}"
    print(f"| in process, batch {args.max_batch} | {results[key]:.1f} | {results[key] / base:.2f}x |  |  | "
          f"{args.max_batch} |  |  |  |")
    for name in ("serve_batch_1", f"serve_micro_batch_{args.max_batch}", "swap_under_load"):
        if name in results:
            r = results[name]
            print(f"| {name} | {r['throughput']:.1f} | {r['vs_in_process_batch_1']:.2f}x | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['mean_batch']:.2f} | {r['errors']} | {r['lost']} | "
                  f"{r.get('decisions_differing_from_fapm_predict', '-')} |")
    print(f"\nload average (1, 5, 15 min): before {results['load_average']['before']}, "
          f"after {results['load_average']['after']}")


if __name__ == "__main__":
    sys.exit(main())
