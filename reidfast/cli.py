"""The command line: `reidfast train | eval | export | demo | configs` (also `python -m reidfast`).

    reidfast train CONFIG [key=value ...] [--resume]
        CONFIG: a shipped config's name (`reidfast configs` lists them) or a YAML file; each
        key=value overrides a dotted config key (optimizer.lr=3e-4, data.root=/data/market1501).
    reidfast eval CHECKPOINT [key=value ...] [--ranked DIR]
        the retrieval metrics of a checkpoint's model on its run's dataset.
    reidfast export CHECKPOINT --output PATH [--format onnx|tensorrt|aoti] [options]
        the checkpoint's model to ONNX (with its preprocessing in the metadata, checked against
        onnxruntime and TensorRT's ONNX support matrix), through ONNX to a TensorRT engine, or to
        an AOTInductor package.
    reidfast demo [--quick] [--seeds N ...] [--output DIR] [--data DIR]
        the synthetic set generated (cached) and Pyramid, PCB and a global-pooling baseline
        trained and compared on it (see reidfast.demo).
    reidfast configs
        the shipped configs, one per line.
"""

from __future__ import annotations

import argparse
import json
import sys

from reidfast.training.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reidfast", description="Person re-identification: train, evaluate, demo.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a method from a config")
    train.add_argument("config", help="a shipped config's name or a YAML file")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    train.add_argument("--resume", action="store_true", help="continue the run in output_dir from its latest checkpoint")

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint")
    evaluate.add_argument("checkpoint", help="a checkpoint file (a run's checkpoints/best.pt or step-*.pt)")
    evaluate.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the run's config")
    evaluate.add_argument("--ranked", metavar="DIR", help="draw ranked results into DIR")

    export = commands.add_parser("export", help="export a checkpoint's model to ONNX, TensorRT or AOTInductor")
    export.add_argument("checkpoint", help="a checkpoint file (a run's checkpoints/best.pt or step-*.pt)")
    export.add_argument("--output", required=True, help="the ONNX file, the engine file (tensorrt), the .pt2 (aoti)")
    export.add_argument("--format", choices=("onnx", "tensorrt", "aoti"), default="onnx")
    export.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    export.add_argument("--half", action="store_true", help="a float16 graph (TensorRT 11's fp16 engines need it)")
    export.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings in the graph")
    export.add_argument("--fixed-batch", action="store_true", help="a fixed batch dimension (default: dynamic)")
    export.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="TensorRT engine precision")
    export.add_argument("--min-batch", type=int, default=1, help="TensorRT profile: smallest batch")
    export.add_argument("--opt-batch", type=int, default=16, help="TensorRT profile: batch tuned for")
    export.add_argument("--max-batch", type=int, default=64, help="largest batch (TensorRT profile, AOTInductor)")
    export.add_argument("--device", default="cpu", help="the device an AOTInductor package is compiled for")
    export.add_argument("--workspace", type=int, default=1 << 30, help="TensorRT workspace in bytes")

    demo = commands.add_parser("demo", help="train and compare Pyramid, PCB and a baseline on synthetic data")
    demo.add_argument("--quick", action="store_true", help="a tiny budget (a smoke test of the whole pipeline)")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds to run (the table gives mean and spread)")
    demo.add_argument("--output", default="runs/demo", help="folder of the runs and the report")
    demo.add_argument("--data", default="data/synthetic-demo", help="folder of the synthetic set (cached)")

    commands.add_parser("configs", help="list the shipped configs")

    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from reidfast.training import train as run_training

            result = run_training(_load(args.config, args.overrides), resume=args.resume)
            print(json.dumps({"run_dir": str(result.run_dir), "steps": result.steps, **result.metrics}, indent=2))
        elif args.command == "eval":
            from reidfast.training import evaluate_checkpoint

            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.overrides, args.ranked), indent=2))
        elif args.command == "export":
            from reidfast.export.checkpoint import export_checkpoint

            report, engine = export_checkpoint(
                args.checkpoint, args.output, args.format, opset=args.opset, half=args.half, normalize=args.normalize,
                dynamic_batch=not args.fixed_batch, precision=args.precision, min_batch=args.min_batch,
                opt_batch=args.opt_batch, max_batch=args.max_batch, workspace=args.workspace, device=args.device)
            if report is None:
                print(json.dumps({"aoti": str(engine)}, indent=2))
            else:
                print(json.dumps({
                    "onnx": str(report.path), "engine": None if engine is None else str(engine),
                    "preprocessing": json.loads(report.preprocessing.to_json()),
                    "onnxruntime_max_relative_error": {str(batch): error for batch, error in report.max_errors.items()},
                    f"tensorrt_{report.tensorrt_version}_unsupported_nodes": [list(n) for n in report.unsupported],
                }, indent=2))
        elif args.command == "demo":
            from reidfast.demo import run_demo

            run_demo(output=args.output, data=args.data, seeds=args.seeds, quick=args.quick)
        else:
            from reidfast.training import shipped_configs

            print("\n".join(shipped_configs()))
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, ImportError) as error:
        print(f"reidfast {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


def _load(config: str, overrides: list[str]):
    from reidfast.training import load_config

    return load_config(config, overrides)


if __name__ == "__main__":
    sys.exit(main())
