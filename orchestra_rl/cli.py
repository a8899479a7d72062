"""`orchestra-rl`: the command line. Every subcommand but `report` (which takes paths) takes Hydra overrides
(key=value ...) after its name."""

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


def _multirun(command: str, overrides: list[str]) -> int:
    """`orchestra-rl train -m reward.cost_weight=0,0.5,1 ...`: a Hydra sweep, one run per combination, each writing
    into its own Hydra job folder (multirun/<date>/<time>/<n>/)."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from orchestra_rl.config import CONF_DIR, register_configs, to_config

    register_configs()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
    def job(composed) -> None:
        cfg = to_config(composed)
        out = HydraConfig.get().runtime.output_dir
        cfg.train.output_dir, cfg.eval.output_dir, cfg.sft.output_dir = f"{out}/train", f"{out}/eval", f"{out}/sft"
        _run(command, cfg)

    sys.argv = ["orchestra-rl", "--multirun", *overrides]
    job()
    return 0


def _run(command: str, cfg: Config) -> None:
    if command == "config":
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return
    from orchestra_rl.config import ConfigError
    from orchestra_rl.envs.domain_files import DomainError
    from orchestra_rl.envs.sources import check_sources
    from orchestra_rl.system import ray_session

    try:
        check_sources(cfg)  # a bad domain folder or benchmark file is one line, before any actor starts
    except (DomainError, ConfigError) as e:
        print(f"environment error: {e}", file=sys.stderr)
        sys.exit(2)
    with ray_session(cfg):  # the one owner of Ray's lifetime: every role below runs inside it
        if command == "train":
            from orchestra_rl.trainer import train

            train(cfg)
        elif command == "sft":
            from orchestra_rl.sft.train import run_sft

            print(run_sft(cfg))
        elif command == "serve":
            _serve(cfg)
        elif command == "eval":
            from orchestra_rl.eval.run import run_eval

            run_eval(cfg)
        elif command == "bench rollout":
            from orchestra_rl.bench.rollout import run_rollout_bench

            run_rollout_bench(cfg)
        elif command == "bench step":
            from orchestra_rl.bench.step import run_step_bench

            run_step_bench(cfg)
        elif command == "bench sync":
            from orchestra_rl.bench.sync import run_sync_bench

            run_sync_bench(cfg)


def _serve(cfg: Config) -> None:
    """`serve`: the policy (model.path, default the tiny one) as an OpenAI-compatible endpoint until interrupted."""
    import signal
    import threading

    from orchestra_rl.config import ConfigError
    from orchestra_rl.serve.orchestrator import served_env, start_orchestrator
    from orchestra_rl.system import System

    try:
        served_env(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with System(cfg) as system:
        url = start_orchestrator(cfg, system.rollout.workers)
        print(f"serving {system.model_path} as model {cfg.serve.model_name!r} at {url} (Ctrl-C stops)", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


def _synthesize(cfg: Config) -> int:
    """`data synthesize`: ToolScale domains from synth.llm into synth.output_dir (toolscale/)."""
    from orchestra_rl.config import ConfigError
    from orchestra_rl.toolscale.pipeline import print_summary, synthesize
    from orchestra_rl.system import ray_session
    from orchestra_rl.tools.sandbox import SandboxUnavailable

    from orchestra_rl.config.validate import check_synth_endpoint

    try:
        check_synth_endpoint(cfg)  # before Ray starts
        with ray_session(cfg):
            out = synthesize(cfg)
    except (ConfigError, FileExistsError, SandboxUnavailable) as e:
        print(f"synthesize: {e}", file=sys.stderr)
        return 2
    print_summary(out)
    return 0


def _probe(cfg: Config, out: str | None) -> int:
    """`probe`: sft/train.probe_policy on the configured policy; no Ray (the driver's CPU)."""
    import json
    from pathlib import Path

    from orchestra_rl.config import env_sources
    from orchestra_rl.data.world import build_world
    from orchestra_rl.models.tiny import resolve_model_path
    from orchestra_rl.sft.train import probe_policy

    if not any(source.kind == "qa" for source in env_sources(cfg).values()) or not cfg.model.word_tokens:
        print("probe: needs the QA world among env and a policy whose tool names are tokens (model.word_tokens)",
              file=sys.stderr)
        return 2
    try:
        model_path = resolve_model_path(cfg)
    except FileNotFoundError as e:
        print(f"probe: {e}", file=sys.stderr)
        return 2
    found = probe_policy(cfg, model_path, build_world(cfg.data), prefix="")
    if out:
        Path(out).write_text(json.dumps(found, indent=1) + "\n")
        print(f"written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orchestra-rl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [("train", "SFT warm start, then RL (GRPO/PPO) through the actor system"),
                            ("sft", "SFT on scripted demonstrations (Ray Train, FSDP2); writes an HF checkpoint"),
                            ("eval", "evaluate a policy over a task split through the actor system"),
                            ("serve", "serve the policy as an OpenAI-compatible endpoint on Ray Serve"),
                            ("config", "print the composed, validated config")]:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("-m", "--multirun", action="store_true", help="Hydra sweep: key=a,b,c runs each value")
        command.add_argument("overrides", nargs="*")
    bench = sub.add_parser("bench", help="benchmarks")
    bench.add_argument("which", choices=["rollout", "sandbox", "step", "sync"])
    bench.add_argument("overrides", nargs="*")
    data = sub.add_parser("data", help="the task world")
    data.add_argument("action", choices=["build", "strategies", "synthesize"])
    data.add_argument("overrides", nargs="*")
    report = sub.add_parser("report", help="compare train runs side by side (their train_report.json)")
    report.add_argument("paths", nargs="+", help="train_report.json files or folders holding them (multirun/...)")
    report.add_argument("--plot", help="where to write the accuracy-vs-$ Pareto plot of the runs (PNG; default: "
                                       "pareto.png in the first path's folder)")
    probe = sub.add_parser("probe", help="where the policy (model.path; default the tiny model) chooses its tools: "
                                          "the family probe at its first call and its next call behind a lookup's "
                                          "search, over the QA world's tasks (the SFT's probe.json, for any checkpoint)")
    probe.add_argument("--out", help="also write the findings there as JSON")
    probe.add_argument("overrides", nargs="*")
    sandbox = sub.add_parser("sandbox", help="run one Python snippet in the python tool's sandbox, with its "
                                              "configured limits (tools.tools.python.*); prints the JSON result")
    sandbox.add_argument("-c", dest="code", required=True, help="the code to run")
    sandbox.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    if args.command == "report":
        from pathlib import Path

        from orchestra_rl.eval.pareto import pareto_front, plot_pareto
        from orchestra_rl.eval.report import load_train_reports, print_runs

        try:
            runs = load_train_reports(args.paths)
        except (FileNotFoundError, ValueError) as e:
            print(f"report: {e}", file=sys.stderr)
            return 2
        print_runs(runs)
        first = Path(args.paths[0])
        points = {label: (r["after"]["overall"]["cost_usd"], r["after"]["overall"]["accuracy"])
                  for label, r in runs.items()}
        png = plot_pareto(points, args.plot or (first if first.is_dir() else first.parent) / "pareto.png",
                          f"after training: accuracy vs $ per task ({len(runs)} runs)")
        print(f"Pareto front (cheapest first): {' < '.join(pareto_front(points))}\nplot: {png}")
        return 0
    if getattr(args, "multirun", False):
        _config([o for o in args.overrides if "," not in o])  # a bad fixed override fails fast, in one line
        return _multirun(args.command, args.overrides)
    cfg = _config(args.overrides)
    if args.command == "bench" and args.which == "sandbox":  # no Ray: the python tool alone
        from orchestra_rl.bench.sandbox import run_sandbox_bench

        run_sandbox_bench(cfg)
    elif args.command in ("train", "sft", "eval", "serve", "config", "bench"):
        _run(f"bench {args.which}" if args.command == "bench" else args.command, cfg)
    elif args.command == "sandbox":
        from orchestra_rl.tools.sandbox import sandbox_main

        python_tool = cfg.tools.settings_of_kind("python")
        if python_tool is None:
            print("sandbox: no tool of kind python in tools.tools, whose limits to use", file=sys.stderr)
            return 2
        return sandbox_main(args.code, python_tool)
    elif args.command == "probe":
        return _probe(cfg, args.out)
    elif args.command == "data" and args.action == "synthesize":
        return _synthesize(cfg)
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
