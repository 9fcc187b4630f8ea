"""Checks on the command line's overrides, before Hydra composes a job: an unknown option or a wrong type fails in one
line (`python -m pipeline` calls these first; `pipeline.validate` checks the composed config after)."""

from __future__ import annotations

from pathlib import Path

from pipeline.adapter_configs import REFUSED
from pipeline.validate import ConfigError


def check_group_options(conf_dir: Path, overrides: list[str]) -> None:
    """`group=option` overrides must name an existing option (e.g. `experiment=paper_lora`, `finetune=lora,full`)."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        group = conf_dir / key
        if not sep or "." in key or key.startswith("hydra") or not group.is_dir() or value in ("null", ""):
            continue
        allowed = sorted(p.stem for p in group.glob("*.yaml"))
        for option in value.split(","):
            if key == "finetune" and option in REFUSED and option not in allowed:
                raise ConfigError(
                    f"finetune={option} is not supported: {REFUSED[option]}; allowed: {', '.join(allowed)}"
                )
            if option not in allowed:
                raise ConfigError(f"{key}={option} is not a known {key}; allowed: {', '.join(allowed)}")


def relative_alpha_as_sweep(argv: list[str]) -> list[str]:
    """A relative alpha given alone (`finetune.alpha=2r`) as a one-value sweep (`choice(2r)`): Hydra merges a plain
    override into the config before the sweeper resolves alpha against each job's r, and `2r` is no number. A single
    run has no sweeper to resolve it: a one-line error."""
    from pipeline.sweep.grid import is_relative_alpha

    multirun = any(a in ("-m", "--multirun") or a == "hydra.mode=MULTIRUN" for a in argv)
    out = []
    for a in argv:
        value = a.partition("=")[2]
        if is_relative_alpha(a) and "," not in value:
            if not multirun:
                raise ConfigError(
                    f"finetune.alpha={value} is relative to r, which only a sweep (-m) resolves; "
                    "a single run takes a number, e.g. finetune.alpha=16"
                )
            a = f"finetune.alpha=choice({value})"
        out.append(a)
    return out


def precompose(conf_dir: Path, argv: list[str]) -> None:
    """Compose the config as the CLI will, so that a type error fails in one line before Hydra starts a job.

    Each value of a sweep override (`finetune.r=4,8`) is composed once; Hydra's own overrides are left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a in ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc") for a in argv):
        return
    from pipeline.sweep.grid import for_method, is_relative_alpha

    with_value = {
        "--cfg",
        "-c",
        "--package",
        "-p",
        "--config-path",
        "-cp",
        "--config-name",
        "-cn",
        "--config-dir",
        "-cd",
    }
    args, skip = [], False
    for a in argv:
        if skip or a in with_value:  # a flag's value is no override
            skip = not skip
            continue
        if not a.startswith("-") and not a.lstrip("+~").startswith("hydra") and not is_relative_alpha(a):
            args.append(a)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as error:
        raise ConfigError(_one_line(error)) from error
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    variants = [fixed + [f"{s.get_key_element()}={first}" for s, first in _firsts(sweeps)]]
    for sweep in sweeps:
        others = [f"{s.get_key_element()}={first}" for s, first in _firsts(sweeps) if s is not sweep]
        variants += [fixed + others + [f"{sweep.get_key_element()}={v}"] for v in sweep.sweep_string_iterator()]
    if any(o.is_sweep_override() for o in parsed):  # as the sweeper does: a job keeps the keys its method has
        variants = [for_method(v) for v in variants]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            for overrides in variants:
                try:
                    compose(config_name="config", overrides=overrides)
                except (HydraException, OmegaConfBaseException) as error:
                    raise ConfigError(_one_line(error)) from error
    finally:
        GlobalHydra.instance().clear()


def _firsts(sweeps):
    return [(s, next(iter(s.sweep_string_iterator()))) for s in sweeps]


def _one_line(error: BaseException) -> str:
    """Hydra's message and its cause's first line (OmegaConf's says what was wrong and what is allowed)."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    cause = error.__cause__
    if cause is not None and str(cause):
        message += ": " + str(cause).splitlines()[0]
    return message
