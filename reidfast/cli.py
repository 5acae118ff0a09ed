"""The command line: `reidfast train | eval | demo | configs` (also `python -m reidfast`).

    reidfast train CONFIG [key=value ...] [--resume]
        CONFIG: a shipped config's name (`reidfast configs` lists them) or a YAML file; each
        key=value overrides a dotted config key (optimizer.lr=3e-4, data.root=/data/market1501).
    reidfast eval CHECKPOINT [key=value ...] [--ranked DIR]
        the retrieval metrics of a checkpoint's model on its run's dataset.
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
        elif args.command == "demo":
            from reidfast.demo import run_demo

            run_demo(output=args.output, data=args.data, seeds=args.seeds, quick=args.quick)
        else:
            from reidfast.training import shipped_configs

            print("\n".join(shipped_configs()))
    except (ConfigError, FileNotFoundError, FileExistsError) as error:
        print(f"reidfast {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


def _load(config: str, overrides: list[str]):
    from reidfast.training import load_config

    return load_config(config, overrides)


if __name__ == "__main__":
    sys.exit(main())
