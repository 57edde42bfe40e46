"""README.md runs as written: every train.py/eval.py command it shows composes with the configs,
every benchmark command parses and its overrides compose, and every `module.` option it names
exists. Its outputs tree and results.json keys are checked
against a run in tests/test_recipes.py (which shares that run with other tests)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import re
import shlex
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from cifar_lightning.cli import PLUGINS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
CONF = REPO / "conf"

# Placeholders in the README's commands -> values a user might type.
WORDS = {"<run>": "2026-01-01_00-00-00_000000", "<date>": "2026-01-01_00-00-00_000000",
         "DATA_ROOT": "data/cifar10-jpeg"}  # fmt: skip
VALUES = {"N": "2", "M": "2", "E": "2", "P": "gpu", "[W1,W2,W3]": "[64,256,256]",
          "[...]": "[24,32]"}  # fmt: skip
# Inline `key=value` mentions that are not overrides of train.yaml as they stand: the option
# each needs first, or None for prose that is no override (a Python argument, a shorthand).
CONTEXT = {
    "model.whiten_bias_lr_scale": ["experiment=fast_cpu"],
    "optimizer.sgd_lr": ["optimizer=adam_to_sgd"],
    "trainer.sync_batchnorm": ["trainer=ddp"],
    "trainer.benchmark": ["trainer=gpu"],
    "hydra.launcher.max_num_timeout": ["hydra/launcher=slurm"],
    "sgd_lr": None,
    "weights_only": None,
}
INVALID = ["optimizer=foo", "optimzer.lr=1"]  # shown as examples of an unknown option and key


def _code_spans(text: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]


def _command_lines() -> list[str]:
    """Every line of the fenced blocks (shell continuations joined) and every code span."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
    blocks = [re.sub(r"\\\n\s*", "", block) for block in blocks]  # shell line continuations
    lines = [line for block in blocks for line in block.splitlines()] + _code_spans(README)
    return [line.strip() for line in lines]


def commands() -> list[str]:
    """`python train.py|eval.py|predict.py|export.py ...` of the fenced blocks and the prose."""
    pattern = r"(\w+=\S+ )*python (train|eval|predict|export)\.py\b"
    return [line for line in _command_lines() if re.match(pattern, line)]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def any_value(key: str) -> str:
    """`key=...` in the prose: any of a group's options (its first will do); any value of a
    key (null: the key must exist)."""
    return f"{key}={options(key)[0]}" if (CONF / key).is_dir() else f"{key}=null"


def overrides_of(command: str) -> tuple[str, list[str]]:
    """(config name, overrides of the first job): comments, environment variables, -m and `...`
    dropped, placeholders filled in, a sweep's first value taken."""
    for word, value in WORDS.items():
        command = command.replace(word, value)
    command = re.sub(r"(^|\s)<[^>]*>", " ", command)  # `python train.py <args>`: none given
    args = shlex.split(command.replace("…", "..."), comments=True)
    script = next(a for a in args if a.endswith(".py"))
    args = [a for a in args[args.index(script) + 1 :] if a not in ("-m", "--multirun", "...")]
    args = [re.sub(r"=(.*)$", lambda m: "=" + VALUES.get(m[1], m[1]), a) for a in args]
    args = [any_value(a[:-4]) if a.endswith("=...") else a for a in args]
    first = []
    for arg, override in zip(args, OverridesParser.create().parse_overrides(args), strict=True):
        if override.is_sweep_override():
            arg = f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
        first.append(arg)
    return Path(script).stem, first


def compose_cfg(config: str, overrides: list[str]):
    for arg in overrides:
        needed = PLUGINS.get(arg)
        if needed and importlib.util.find_spec(needed[0]) is None:
            pytest.skip(f"{arg} needs {needed[0]} (pip install -e '.[{needed[1]}]')")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=overrides, return_hydra_config=True)


def test_the_readme_shows_commands():
    assert len(commands()) >= 25  # the parsing finds the recipes


@pytest.mark.parametrize("command", commands(), ids=lambda c: c.split("#")[0].strip())
def test_readme_command_composes(command: str):
    config, overrides = overrides_of(command)
    compose_cfg(config, overrides)  # an unknown key, group option or plugin raises


def benchmark_commands() -> list[str]:
    """`python benchmarks/NAME.py ...` of the fenced blocks and the prose."""
    pattern = r"python benchmarks/\w+\.py\b"
    return sorted({line for line in _command_lines() if re.match(pattern, line)})


class _Parsed(Exception):
    """Raised in place of a benchmark's run once its arguments have parsed."""


def test_the_readme_shows_benchmark_commands():
    assert len(benchmark_commands()) >= 20


@pytest.mark.parametrize("command", benchmark_commands(), ids=lambda c: c.split("#")[0].strip())
def test_readme_benchmark_command_parses_and_composes(command: str, monkeypatch):
    """Each benchmark command as the README shows it: its options parse (the script stops
    there, nothing runs), and its train.py overrides (and --b's) compose with its recipe."""
    args = shlex.split(command, comments=True)
    name, argv = Path(args[1]).stem, args[2:]
    parsed = {}
    real = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        parsed["args"] = real(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", [args[1], *argv])  # for a main() that reads sys.argv
    main = importlib.import_module(f"benchmarks.{name}").main
    with pytest.raises(_Parsed):
        main(argv) if inspect.signature(main).parameters else main()
    ns = parsed["args"]
    if name == "wall_time":  # the arguments after -- are train.py's own
        compose_cfg(*overrides_of(f"python train.py {shlex.join(argv[argv.index('--') + 1 :])}"))
    elif hasattr(ns, "experiment"):  # common.parse's split: key=value and ~key are overrides
        overrides = [a for a in argv if ("=" in a and not a.startswith("-")) or a[:1] == "~"]
        experiment = [f"experiment={ns.experiment}"] if ns.experiment != "none" else []
        compose_cfg("train", [*experiment, *overrides, *getattr(ns, "b", [])])


def inline_overrides() -> list[str]:
    """Single `key=value` mentions in the prose, e.g. `trainer.precision=32-true`."""
    spans = _code_spans(README)
    pattern = r"'?[a-z_][\w./]*=[^\s=]+'?"
    found = {s.strip("'") for s in spans if re.fullmatch(pattern, s)}
    return sorted(s for s in found if CONTEXT.get(s.split("=")[0], []) is not None)


def script_of(key: str) -> str:
    """The entry point a `key=value` mention is for: train.py, or predict.py / export.py when
    the key is one of their own top-level options and not train.py's."""
    train_keys = set(compose_cfg("train", []))
    for script in ("predict", "export"):
        if key not in train_keys and key in OmegaConf.load(CONF / f"{script}.yaml").keys():
            return script
    return "train"


@pytest.mark.parametrize("mention", inline_overrides())
def test_readme_inline_option_composes(mention: str):
    key = mention.split("=", 1)[0]
    if mention in INVALID:
        with pytest.raises(Exception, match="Could not (find|override)"):
            compose_cfg("train", [mention])
        return
    script = script_of(key)
    # Their required options, unless the mention is one of them.
    required = {"predict": ["input=x.png"], "export": ["ckpt_path=x.ckpt"]}.get(script, [])
    required = [r for r in required if not r.startswith(f"{key}=")]
    # In shell quotes, as a user types it: Hydra then sees its own quotes inside.
    _, overrides = overrides_of(f"python {script}.py '{mention}'")
    compose_cfg(script, [*CONTEXT.get(key, []), *required, *overrides])


def module_options() -> set[str]:
    """The options the README names as the LightningModule's: the list in its sentence on
    `module.` and every `module.<name>` it mentions (not cifar_lightning/module.py)."""
    sentence = re.search(r"own options sit under `module\.`(.*?)\.\s+[A-Z]", README, flags=re.S)
    assert sentence, "README: the sentence on the module. options is gone"
    mentioned = set(re.findall(r"(?<![\w/.])module\.(\w+)", README)) - {"py"}
    return set(re.findall(r"`(\w+)`", sentence[1])) | mentioned


def test_every_module_option_the_readme_names_is_in_train_yaml():
    options = module_options()
    assert {"label_smoothing", "tta_level", "train_resolution"} <= options  # parsing works
    module = compose_cfg("train", []).module
    assert sorted(options - set(module)) == []


def outputs_tree() -> dict[str, str]:
    """The README's tree of one run's folder: {path in the run folder: its description}."""
    block = re.search(r"## Outputs\n+```\n(.*?)```", README, flags=re.S)
    assert block, "README: the outputs tree is gone"
    entries: dict[str, str] = {}
    inside = False
    for line in block[1].splitlines():
        indent = len(line) - len(line.lstrip())
        if line.strip().startswith("runs/"):
            inside = True
        elif indent <= 2:
            inside = False
        elif inside and indent == 4:
            path, _, text = line.strip().partition(" ")
            entries[path] = text.strip()
        elif inside and entries:  # a description's continuation line
            last = list(entries)[-1]
            entries[last] += " " + line.strip()
    return entries


def results_keys() -> set[str]:
    """The keys the README's paragraph on `results.json` names."""
    paragraph = re.search(r"\n`results\.json` \(.*?\n\n", README, flags=re.S)
    assert paragraph, "README: the paragraph on results.json is gone"
    return set(re.findall(r"`([a-z_]+)`", paragraph[0]))
