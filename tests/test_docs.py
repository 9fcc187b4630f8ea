"""Every relative link in README.md and docs/ points to a file that exists, and an anchor to a heading that exists.

Links are read the way GitHub renders them: `[text](target)` and `![alt](target)` outside code; an anchor is the
heading's GitHub slug (lower case, punctuation dropped, spaces to hyphens). Links to the web are not followed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


DRAFTS = "_incoming"  # docs/_incoming/: helpers' drafts, waiting to be placed in the pages


def pages(root: Path = ROOT) -> list[Path]:
    docs = [p for p in sorted((root / "docs").rglob("*.md")) if DRAFTS not in p.relative_to(root).parts]
    return [root / "README.md", *docs]


def prose(text: str) -> str:
    """The text a reader sees as prose: fenced code blocks and inline code removed."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """`target (why)` for each relative link of the page that leads nowhere."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...: not a file of the repo
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(root) if dest.is_relative_to(root) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    assert broken_links(page) == []


def test_a_planted_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "there.md").write_text("# Sequential seeds: make decide\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/there.md) [ok](docs/there.md#sequential-seeds-make-decide) [web](https://example.org/x.md)\n"
        "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
        "[gone](docs/missing.md) ![gone](docs/img/missing.png) [bad anchor](docs/there.md#no-such-heading)\n"
    )
    assert [b.split(" ")[0] for b in broken_links(tmp_path / "README.md", tmp_path)] == [
        "docs/missing.md",
        "docs/img/missing.png",
        "docs/there.md#no-such-heading",
    ]


def test_every_docs_page_is_reachable_from_the_index():
    """A page no one links to is a page no one finds: docs/index.md names every page of docs/."""
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in LINK.findall(prose(index.read_text()))}
    assert [p.relative_to(ROOT).as_posix() for p in pages()[1:] if p.resolve() not in linked and p != index] == []


# ------------------------------------------------------------------------------------------ commands the docs show

PIPELINE_CMD = re.compile(r"(?:\S*/)?python3? -m pipeline(?=\s|$)(?:[^;&|`\n]*)")  # not pipeline.report, .tools, ...
MAKE_CMD = re.compile(r"\bmake ([a-z][a-z-]*)((?: [A-Z_]+=(?:\"[^\"]*\"|\S+))*)")
MAKE_RUNS_PIPELINE = ("run", "demo", "sweep", "decide", "reproduce", "reproduce-mini")  # the targets that compose


def shown_commands(root: Path = ROOT) -> list[tuple[str, str]]:
    """(where, command) for each `python -m pipeline ...` and each `make <target> ...` that runs it, as README.md,
    docs/*.md (code spans and blocks) and the YAML comments under conf/ show them; continuation lines joined. The
    syntax line (`python -m pipeline <group>=<option> ...`) is no command."""
    texts = [(p, " ".join(INLINE_CODE.findall(p.read_text())) + "\n" + "\n".join(FENCE.findall(p.read_text())))
             for p in pages(root)]  # fmt: skip
    texts += [(p, "\n".join(line.partition("#")[2] for line in p.read_text().splitlines() if "#" in line))
              for p in sorted((root / "conf").rglob("*.yaml"))]  # fmt: skip
    found = []
    for path, text in texts:
        text = re.sub(r"\\\n\s*#?", " ", text.replace("`", "\n"))  # a command continued on the next line
        where = path.relative_to(root).as_posix()
        found += [(where, m.group(0).strip()) for m in PIPELINE_CMD.finditer(text) if "<group>" not in m.group(0)]
        found += [(where, m.group(0).strip()) for m in MAKE_CMD.finditer(text) if m.group(1) in MAKE_RUNS_PIPELINE]
    return sorted(set(found))


def pipeline_argvs(command: str) -> list[list[str]]:
    """The `python -m pipeline` argument lists a shown command runs: a make target expanded by `make -n`;
    placeholders dropped (`...`, `<user>/<name>` as x/x, `[optional]` as given)."""
    import shlex
    import subprocess

    command = re.sub(r"<[^>]*>", "x", command).replace("[hub.", "hub.").replace("[hydra.", "hydra.")
    command = re.sub(r"(hub\.\S+|hydra\.sweeper\.n_trials=\S+)\]", r"\1", command)
    if command.startswith("make "):
        dry = subprocess.run(["make", "-n", "-s", *shlex.split(command)[1:]], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        lines = [m.group(0) for m in PIPELINE_CMD.finditer(dry.stdout.replace("\\\n", " "))]
    else:
        lines = [command]
    return [[a for a in shlex.split(line)[3:] if a != "..."] for line in lines]


def compose_shown(argv: list[str]) -> None:
    """What `python -m pipeline` does before it runs anything (its overrides' checks and a composition of each sweep
    value), then the whole config, Hydra's own overrides included, composed once more."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    from pipeline.config import register_configs
    from pipeline.overrides import check_group_options, precompose, relative_alpha_as_sweep

    register_configs()
    conf = ROOT / "conf"
    check_group_options(conf, argv)
    precompose(conf, argv)
    args = [a for a in relative_alpha_as_sweep(argv) if not a.startswith("-") and a not in ("job", "hydra", "all")]
    parsed = OverridesParser.create().parse_overrides(args)
    firsts = [
        f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line
        for o in parsed
        if not (o.is_sweep_override() and o.get_key_element() == "finetune.alpha")  # relative: the sweeper's
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="config", overrides=firsts, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        del cfg["hydra"]  # resolves only inside a running job
    OmegaConf.resolve(cfg)  # every interpolation of the job's config resolves


COMMANDS = sorted({command for _, command in shown_commands()})  # each once, wherever it is shown


def test_the_docs_show_the_commands_this_test_composes():
    assert "python -m pipeline -m sweep=lora_grid hydra/launcher=slurm" in COMMANDS  # conf/hydra/launcher/slurm.yaml
    assert any(c.startswith("make decide DECIDE_ARGS=") for c in COMMANDS) and "make run" in COMMANDS
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:70] for c in COMMANDS])
@pytest.mark.integration
def test_every_command_the_docs_show_composes(command):
    argvs = pipeline_argvs(command)
    assert argvs, f"{command} runs no python -m pipeline"
    for argv in argvs:
        compose_shown(argv)
