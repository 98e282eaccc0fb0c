"""Forward throughput (voxels/s) and peak memory of FGNet (frozen SAM2 tiny), the FGE alone and
the 3D U-Net on the same patch, on CPU and, where present, CUDA.

Each (model, device) runs in its own process, so one model's memory peak never hides in
another's: on CPU the peak is the process's maximum resident set (ru_maxrss) minus what it held
before the model was built; on CUDA it is torch.cuda.max_memory_allocated. SAM2 is randomly
initialised (no official weights here), which changes nothing in speed or memory.

    python benchmarks/model_throughput.py --patch 16 128 128
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch

from neurosam.model.build import build_model
from neurosam.model.config import SAM2_TOTAL_STRIDE, ModelConfig

ARCHITECTURES = ("fgnet", "fge", "unet")
LABELS = {"fgnet": "FGNet (SAM2 tiny, frozen)", "fge": "FGE alone", "unet": "3D U-Net (MALA-style)"}


def model_config(architecture: str, patch: list[int]) -> ModelConfig:
    """Default widths; SAM2 sees slices at their own in-plane size (rounded up to its stride)."""
    image_size = SAM2_TOTAL_STRIDE * math.ceil(max(patch[1:]) / SAM2_TOTAL_STRIDE)
    return ModelConfig(architecture=architecture, sam2={"variant": "tiny", "trainable": "frozen", "image_size": image_size})


def measure(architecture: str, device: str, patch: list[int], batch: int, repeats: int, amp: bool) -> dict:
    """Runs in the child process: builds one model and times its forward passes."""
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = model_config(architecture, patch)
    model = build_model(config).to(device).eval()
    raw = torch.rand(batch, 1, *patch, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
            model(raw)
        if device == "cuda":
            torch.cuda.synchronize()

    forward()
    start = time.perf_counter()
    for _ in range(repeats):
        forward()
    seconds = (time.perf_counter() - start) / repeats
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kib) / 2**10
    return {
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trainable": sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad),
        "seconds": seconds,
        "voxels_per_second": batch * math.prod(patch) / seconds,
        "peak_mib": peak_mib,
    }


def run_in_child(architecture: str, device: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--child", architecture, "--devices", device, "--patch", *map(str, args.patch),
        "--batch", str(args.batch), "--repeats", str(args.repeats), *(["--amp"] if args.amp else []),
    ]  # fmt: skip
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--child", choices=ARCHITECTURES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.devices[0], args.patch, args.batch, args.repeats, args.amp)))
        return

    peak_kind = {"cpu": "RSS increase", "cuda": "max allocated"}
    print(f"patch {args.batch} x 1 x {' x '.join(map(str, args.patch))}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads{', bf16 autocast' if args.amp else ''}")  # fmt: skip
    print()
    print("| model | device | parameters (M) | trainable (M) | s / patch | voxels/s | peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for device in args.devices:
        for architecture in ARCHITECTURES:
            result = run_in_child(architecture, device, args)
            print(
                f"| {LABELS[architecture]} | {device} | {result['parameters'] / 1e6:.2f} | {result['trainable'] / 1e6:.2f} "
                f"| {result['seconds']:.3f} | {result['voxels_per_second']:,.0f} "
                f"| {result['peak_mib']:,.0f} ({peak_kind[device]}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
