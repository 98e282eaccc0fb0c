"""The ``neurosam`` command. Each subcommand takes the run's config file; errors in the input are
reported in one line naming the problem, with exit status 2, before any work starts."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from neurosam.config import ConfigError
from neurosam.io import VolumeError
from neurosam.pipeline.registry import stage_names
from neurosam.stages.stage import InputError


def _run(args) -> None:
    from neurosam.pipeline.run import format_summary, run_pipeline

    print(format_summary(run_pipeline(args.config, until=args.until)))


def _stage(args) -> None:
    from neurosam.pipeline.run import format_summary, run_pipeline

    print(format_summary(run_pipeline(args.config, until=args.command)))


def _status(args) -> None:
    from neurosam.pipeline.run import run_status

    for task_id, done, total in run_status(args.config):
        print(f"{task_id:<24} {done:>7}/{total:<7} blocks done")


def _worker(args) -> None:
    from neurosam.pipeline.worker_process import serve_task

    serve_task(str(Path(args.plan).resolve()), args.task)


def _classical_example(args) -> None:
    from neurosam.classical_example import prepare_classical_example
    from neurosam.pipeline.run import format_summary, run_pipeline

    config_path = prepare_classical_example(args.work_dir)
    print(f"config: {config_path}")
    print(format_summary(run_pipeline(config_path)))


def _convert(args) -> None:
    from neurosam.io.convert import convert

    convert(args.input, args.dataset, args.output, voxel_size=args.voxel_size, offset=args.offset, zarr_format=args.zarr_format)
    print(f"wrote {args.output}")


def _threshold(args, config) -> float:
    """--threshold, or the best-scoring one; one of the run's thresholds either way."""
    from neurosam.view import default_threshold

    threshold = args.threshold if args.threshold is not None else default_threshold(config)
    if not any(abs(threshold - t) < 1e-9 for t in config.segment.thresholds):
        raise ConfigError(
            f"--threshold {threshold:g}: this run segments at {', '.join(f'{t:g}' for t in config.segment.thresholds)} only"
        )
    return threshold


def _view(args) -> None:
    from neurosam.config import load_config
    from neurosam.layout import segmentation_path, view_picture_path
    from neurosam.view import open_viewer, render_overview, serve

    config = load_config(args.config)
    threshold = _threshold(args, config)
    if not args.png:
        serve(open_viewer(config, threshold, bind=args.bind, port=args.port))
        return
    if config.datasets.raw is None:
        raise ConfigError(f"{args.config}: datasets.raw is needed to draw the segmentation over it")
    out = Path(args.out or view_picture_path(config.work_dir, threshold))
    render_overview(config.datasets.raw, segmentation_path(config, threshold), out, z=args.z)
    print(f"wrote {out}")


def _export_precomputed(args) -> None:
    from neurosam.config import load_config
    from neurosam.io.precomputed import export_precomputed

    config = load_config(args.config)
    threshold = _threshold(args, config)
    extras = export_precomputed(config, threshold, args.out)
    beside = f" with its {' and '.join(extras)}" if extras else " (no meshes or skeletons made at this threshold)"
    print(f"wrote the segmentation at threshold {threshold:g}{beside} to {Path(args.out).resolve()}")
    print(f"open it in neuroglancer as precomputed://<URL serving {Path(args.out).resolve()}>")


def _train(args) -> None:
    from neurosam.training.training import train_from_config

    train_from_config(args.config)


def _pretrain(args) -> None:
    from neurosam.training.pretraining import pretrain_from_config

    result = pretrain_from_config(args.config)
    loss = 'already done' if result['last_loss'] is None else f"masked reconstruction loss {result['last_loss']:.5f}"
    print(f"pretrained {result['steps']} steps ({loss}): {result['checkpoint']}")


def _distill(args) -> None:
    from neurosam.training.distillation import distill_from_config

    result = distill_from_config(args.config)
    print(f"distilled {result['steps']} steps, student of {result['student_parameters']:,} parameters: {result['checkpoint']}")


def _export(args) -> None:
    from neurosam.model.build import export_model

    kept = export_model(args.checkpoint, args.output)
    print(f"wrote {args.output} (trained on voxels of {kept.get('voxel_size')} nm, step {kept.get('step')})")


RUN_CONFIG_HELP = "the run's config (YAML), e.g. configs/demo.yaml"
RENAMED_COMMANDS = {"agglomerate": "contacts"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurosam",
        description="Block-wise neuron segmentation of EM volumes, from raw to neurons. Every command that takes a "
        "config validates it first; input errors are one line naming the problem, with exit status 2.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run every stage of a config (resumes where a run stopped)")
    run.add_argument("config", help=RUN_CONFIG_HELP)
    run.add_argument("--until", choices=stage_names(), help="stop after this stage")
    run.set_defaults(handler=_run)
    for stage in stage_names():
        command = commands.add_parser(stage, help=f"run the stages up to and including {stage}")
        command.add_argument("config", help=RUN_CONFIG_HELP)
        command.set_defaults(handler=_stage)

    status = commands.add_parser("status", help="blocks done / total per task")
    status.add_argument("config", help=RUN_CONFIG_HELP)
    status.set_defaults(handler=_status)

    worker = commands.add_parser("worker", help="process blocks for a running scheduler (used by the SLURM launcher)")
    worker.add_argument("plan", help="the run's plan.json, written by the scheduler")
    worker.add_argument("--task", required=True, help="the task id (stage-fingerprint) whose blocks to serve")
    worker.set_defaults(handler=_worker)

    classical = commands.add_parser(
        "classical-example", help="segment the bundled gala crop from its classical boundary map (no network)"
    )
    classical.add_argument("--work-dir", default="runs/classical_example", help="where its volumes, config and results go")
    classical.set_defaults(handler=_classical_example)

    convert = commands.add_parser("convert", help="HDF5 or TIFF stack to zarr, chunk by chunk")
    convert.add_argument("input", help="an .h5/.hdf5 file, a multi-page .tif, or a directory of .tif slices")
    convert.add_argument("output", help="container.zarr/dataset")
    convert.add_argument("--dataset", help="dataset inside the HDF5 file")
    convert.add_argument("--voxel-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="nm; default: the HDF5 'resolution' attribute")
    convert.add_argument("--offset", type=int, nargs=3, metavar=("Z", "Y", "X"), help="nm; default: the HDF5 'offset' attribute")
    convert.add_argument("--zarr-format", type=int, choices=(2, 3), default=3, help="zarr format of the output (default 3)")
    convert.set_defaults(handler=_convert)

    view = commands.add_parser(
        "view",
        help="open the run in neuroglancer (with --png: draw one section to a PNG)",
        description=(
            "Serve the run to neuroglancer, print the viewer's URL and keep serving until Ctrl-C. Layers, each "
            "where its dataset exists, read lazily from the zarr arrays: raw, affinities (first three channels "
            "as RGB), fragments, the segmentation at --threshold and the ground truth; it opens on raw and the "
            "segmentation (the others hidden: tick them in the layer bar) in a large xy section at the volume's "
            "centre, with the largest segments' meshes in the 3D view where the meshes stage made them. Fragments and "
            "segmentation are both segmentation layers, so hovering over a voxel shows its fragment id and "
            "its segment id side by side in the layer bar; Ctrl+right-click pins them in the selection "
            "panel; double-click selects a segment."
        ),
    )
    view.add_argument("config", help=RUN_CONFIG_HELP)
    view.add_argument(
        "--threshold", type=float,
        help="segmentation to show (default: the best-scoring one in work_dir/evaluation.json, else the middle of segment.thresholds)",
    )
    view.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS", help="address to serve on (default 127.0.0.1: this machine only)")
    view.add_argument("--port", type=int, default=0, help="port to serve on (default 0: any free port)")
    view.add_argument("--png", action="store_true", help="draw a section of the raw with the segmentation over it instead")
    view.add_argument("--z", type=int, help="with --png: section index (default: middle)")
    view.add_argument("--out", help="with --png: PNG path (default: in the work dir)")
    view.set_defaults(handler=_view)

    precomputed = commands.add_parser(
        "export-precomputed",
        help="the segmentation at a threshold, with its meshes and skeletons, in neuroglancer's precomputed format",
        description="Write the segmentation at --threshold (default: the best-scoring one, else the middle one) to "
        "--out in neuroglancer's precomputed format (unsharded, compressed_segmentation chunks), with the meshes and "
        "skeletons the meshes and skeletons stages made at that threshold. CloudVolume, igneous and CAVE read it; "
        "neuroglancer opens it as precomputed://URL once a web server serves the directory.",
    )
    precomputed.add_argument("config", help=RUN_CONFIG_HELP)
    precomputed.add_argument("--threshold", type=float, help="segmentation to export")
    precomputed.add_argument("--out", required=True, help="the directory to write (a local path)")
    precomputed.set_defaults(handler=_export_precomputed)

    train = commands.add_parser("train", help="train the affinity network from a training config")
    train.add_argument("config", help="a training config (YAML), e.g. configs/train_medulla_unet.yaml; rerun to resume")
    train.set_defaults(handler=_train)

    pretrain = commands.add_parser("pretrain", help="masked image modelling on unlabelled raw (the FGE, or SAM2's encoder)")
    pretrain.add_argument("config", help="a pretraining config (YAML), e.g. configs/pretrain_fge.yaml; rerun to resume")
    pretrain.set_defaults(handler=_pretrain)

    distill = commands.add_parser("distill", help="distil SAM2's image encoder into a light student (generic images, then EM)")
    distill.add_argument("config", help="a distillation config (YAML), e.g. configs/distill_student.yaml; rerun to resume")
    distill.set_defaults(handler=_distill)

    export = commands.add_parser("export", help="a training checkpoint as a model to predict with (weights, config, voxel size; no optimizer)")
    export.add_argument("checkpoint", help="a training checkpoint, e.g. output_dir/checkpoints/best.pt")
    export.add_argument("output", help="where the model to predict with goes (.pt)")
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from neurosam.pipeline.run import RunFailed
    from neurosam.rag import RagError

    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in RENAMED_COMMANDS:
        print(f"neurosam: error: the command {command} is now called {RENAMED_COMMANDS[command]}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)
    try:
        args.handler(args)
    except (ConfigError, VolumeError, InputError, RagError) as error:
        print(f"neurosam: error: {error}", file=sys.stderr)
        return 2
    except RunFailed as failure:
        print(f"neurosam: error: the run did not finish:\n{failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("neurosam: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
