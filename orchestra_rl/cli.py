"""`orchestra-rl`: the command line. Every subcommand takes Hydra overrides (key=value ...) after its name."""

from __future__ import annotations

import argparse
import sys

from orchestra_rl.config import Config, describe_error, load_config


def _config(overrides: list[str]) -> Config:
    """Compose and validate the config; a bad key, type or value exits with one line naming it."""
    try:
        return load_config(overrides)
    except Exception as e:  # noqa: BLE001 - only configuration errors are turned into one line, others re-raised
        line = describe_error(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestra-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("eval", help="evaluate a policy over a task split through the actor system").add_argument(
        "overrides", nargs="*")
    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("which", choices=["rollout"])
    bench.add_argument("overrides", nargs="*")
    data = sub.add_parser("data", help="the task world")
    data.add_argument("action", choices=["build", "strategies"])
    data.add_argument("overrides", nargs="*")
    sandbox = sub.add_parser("sandbox", help="run one Python snippet in the sandbox; prints the JSON result")
    sandbox.add_argument("-c", dest="code", required=True, help="the code to run")
    sub.add_parser("config", help="print the composed, validated config").add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    if args.command == "sandbox":
        from orchestra_rl.tools.sandbox import sandbox_main

        return sandbox_main(args.code)
    cfg = _config(args.overrides)
    if args.command == "config":
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    elif args.command == "eval":
        from orchestra_rl.eval.run import run_eval

        run_eval(cfg)
    elif args.command == "bench":
        from orchestra_rl.bench.rollout import run_rollout_bench

        run_rollout_bench(cfg)
    elif args.command == "data":
        from orchestra_rl.data.world import build_world

        world = build_world(cfg.data)
        if args.action == "build":
            print(world)
        else:
            from orchestra_rl.data.strategies import print_strategy_table

            print_strategy_table(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
