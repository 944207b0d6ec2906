"""The backbone as built (batch norms folded, channels-last input on a CPU) against timm's modules
as they are (``create_feature_extractor(..., optimize=False)``) and against the folded modules
alone, side by side.

    python tools/measure_backbone.py [--backbone tf_efficientnet_lite0] [--threads 1] [--repeats 15]

The three share one set of weights (a backbone without offline weights gets random ones: timing
only), are loaded in one process and timed alternately on the same seeded inputs (batch 1 at 224,
512 and a 384 x 480 tile; 5 images of 224, one CPU call's worth), after a warm-up call each;
medians. The allocator is tuned as ``fapm`` tunes it. The largest difference between the maps as
built and timm's, relative to each map's largest value, is printed with the times.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((1, 224, 224), (5, 224, 224), (1, 512, 512), (1, 384, 480))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import torch

    from fapm_lib import create_feature_extractor
    from fapm_lib.method.backbone import FeatureExtractor, fold_batch_norms
    from fapm_lib.system.allocator import tune_allocator

    tune_allocator()
    torch.set_num_threads(args.threads)
    pretrained = args.backbone == "tf_efficientnet_lite0"  # the offline weights; others random (timing only)
    plain = create_feature_extractor(args.backbone, pretrained, optimize=False)
    folded = fold_batch_norms(plain.model)
    built = {"timm as is": plain, "folded": FeatureExtractor(folded, plain.info, channels_last=False),
             "as built": FeatureExtractor(folded, plain.info, channels_last=True)}
    rows = ["| images | timm as is, ms per image | folded, ms | as built (folded, channels-last), ms "
            "| as built / as is | largest map difference |", "|---|---|---|---|---|---|"]
    for batch, height, width in SHAPES:
        images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {name: [] for name in built}
        with torch.inference_mode():
            maps = {name: extractor(images) for name, extractor in built.items()}
            for _ in range(args.repeats):
                for name, extractor in built.items():
                    start = time.perf_counter()
                    extractor(images)
                    times[name].append(1000 * (time.perf_counter() - start) / batch)
        slow, folded_ms, fast = (statistics.median(times[name]) for name in built)
        difference = max(float((a - b).abs().max() / a.abs().max()) for a, b in
                         zip(maps["timm as is"], maps["as built"], strict=True))
        rows.append(f"| {batch} x {height} x {width} | {slow:.1f} | {folded_ms:.1f} | {fast:.1f} | {fast / slow:.2f} "
                    f"| {difference:.1e} |")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print("\n".join(rows))
    print(f"\n{args.backbone}, {args.threads} thread(s), {args.repeats} repeats; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}; commit {commit}; {date.today()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
