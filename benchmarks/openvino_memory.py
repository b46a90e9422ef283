"""Peak memory of the whole OpenVINO pipeline, opened from an ONNX folder or from an OpenVINO IR folder (issue 14).

    python benchmarks/openvino_memory.py --model ~/.cache/icv-deploy/onnx/sd15-random-vae-tiny
    python benchmarks/openvino_memory.py --model ir/                 # icv-export openvino --onnx ... --output ir/

One process per folder (peak RSS is a process's high-water mark, so folders cannot share one): load with
`engine="openvino"` (the folder's own VAE), then one call on a random picture. latency.py's
peak RSS column counts every engine and the diffusers baseline loaded in its process; this counts one pipeline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this script

from bench_report import machine_description  # noqa: E402

ONE_PIPELINE = """
import json, resource, sys, time
import numpy as np
import icv_deploy
folder, steps, resolution = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started = time.perf_counter()
pipe = icv_deploy.load(folder, engine="openvino")  # the folder's own VAE (an export made with --vae tiny: TAESD)
pipe.progress = False
loaded = time.perf_counter()
image = np.random.default_rng(0).integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
pipe(image, "Segment the cat", steps=steps, sampler="euler_a", resolution=resolution)
print(json.dumps({"load_s": loaded - started, "first_call_s": time.perf_counter() - loaded,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", "models", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="An ONNX folder (icv-export onnx) or OpenVINO IR folder (icv-export openvino); repeatable.")
@click.option("--steps", default=4, help="Sampler steps of the one call.")
@click.option("--resolution", default=256, help="Working resolution of the one call.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the figures here.")
def main(models, steps, resolution, json_out):
    """Peak resident memory of one OpenVINO pipeline per folder: load, then one call."""
    rows = []
    for model in models:
        out = subprocess.run([sys.executable, "-c", ONE_PIPELINE, model, str(steps), str(resolution)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append({"model": model, **json.loads(out)})
        click.echo(f"{model}: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB (load {rows[-1]['load_s']:.1f} s, "
                   f"first call {rows[-1]['first_call_s']:.1f} s, {steps} steps at {resolution} px)")
    if json_out:
        json_out.write_text(json.dumps({"machine": machine_description("cpu"), "steps": steps,
                                        "resolution": resolution, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
