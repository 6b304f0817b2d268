"""Templates: a saved system prompt with a runner, a model and options, used by `chat -t NAME`.

Each template is a TOML file, `$XDG_CONFIG_HOME/llmrun/templates/NAME.toml`:

    system = "Answer in one short paragraph."
    runner = "claude_code"
    model = "haiku"
    temperature = 0.2

    [options]
    effort = "low"

Keys: system, runner, model, temperature, max_tokens, top_p, seed, stop, schema (a JSON
schema, as a table or as JSON text) and [options] (runner options, as `-o`). The flags of
`chat` win over the template; the template's model applies only with its own runner.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..errors import ConfigError

if TYPE_CHECKING:
    from .chat import ChatOptions

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
SAMPLING_KEYS: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "max_tokens": (int,),
    "top_p": (int, float),
    "seed": (int,),
}
KEYS: dict[str, tuple[type, ...]] = {
    "system": (str,),
    "runner": (str,),
    "model": (str,),
    "options": (dict,),
    "stop": (list,),
    "schema": (dict, str),
    **SAMPLING_KEYS,
}


def templates_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "llmrun" / "templates"


def template_path(name: str) -> Path:
    if not NAME.fullmatch(name):
        raise typer.BadParameter(
            "a template name is letters, digits, '_', '-' and '.' (64 at most), not starting with '.' or '-'",
            param_hint="NAME",
        )
    return templates_dir() / f"{name}.toml"


@dataclass
class Template:
    name: str
    system: str | None = None
    runner: str | None = None
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    """temperature, max_tokens, top_p, seed and stop, where the template sets them."""
    schema: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"system": self.system, "runner": self.runner, "model": self.model}
        data.update(self.sampling)
        if self.schema is not None:
            data["schema"] = self.schema
        if self.options:
            data["options"] = self.options
        return {key: value for key, value in data.items() if value is not None}


def load_template(name: str) -> Template:
    """The template NAME; ConfigError naming its file when it is missing or wrong."""
    path = template_path(name)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        known = ", ".join(template_names()) or "none saved"
        raise ConfigError(
            f"no template named {name!r} (templates: {known})",
            hint=f"save one with `llmrun templates save {name} --system ...`",
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return _checked(name, data, path)


def _checked(name: str, data: dict[str, Any], path: Path) -> Template:
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}; a template takes {', '.join(KEYS)}")
        kinds = KEYS[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ConfigError(f"{path}: {key} must be {' or '.join(k.__name__ for k in kinds)}, not {value!r}")
    if not all(isinstance(text, str) for text in data.get("stop", [])):
        raise ConfigError(f"{path}: stop must be a list of strings")
    schema = data.get("schema")
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ConfigError(f"{path}: schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ConfigError(f"{path}: schema must be a JSON object")
    sampling = {key: data[key] for key in (*SAMPLING_KEYS, "stop") if key in data}
    return Template(
        name=name,
        system=data.get("system"),
        runner=data.get("runner"),
        model=data.get("model"),
        options=dict(data.get("options", {})),
        sampling=sampling,
        schema=schema,
    )


def template_names() -> list[str]:
    try:
        return sorted(p.stem for p in templates_dir().glob("*.toml") if NAME.fullmatch(p.stem))
    except OSError:
        return []


def template_toml(template: Template) -> str:
    lines = [f"# llmrun template {template.name}: `llmrun chat -t {template.name} PROMPT`"]
    options = {}
    for key, value in template.as_dict().items():
        if key == "options":
            options = value
        elif key == "schema":
            lines.append(f"schema = {_toml_value(json.dumps(value))}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    if options:
        lines += ["", "[options]", *(f"{_toml_key(str(key))} = {_toml_value(value)}" for key, value in options.items())]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    # JSON's string escapes are TOML's basic string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def apply_template(template: Template, opts: ChatOptions, runner: str | None) -> str | None:
    """Put the template under the flags of `chat` (in `opts`, and `runner`, which is returned):
    a flag given wins. The template's model goes with its runner: `-r` naming another drops it."""
    from ..registry import canonical_name

    own_runner = runner is None or template.runner is None or canonical_name(runner) == canonical_name(template.runner)
    if opts.model is None and own_runner:
        opts.model = template.model
    if opts.system is None:
        opts.system = template.system
    opts.options = {**template.options, **opts.options}
    for key, value in template.sampling.items():
        if opts.sampling.get(key) is None:
            opts.sampling[key] = value
    if opts.json_schema is None:
        opts.json_schema = template.schema
    return runner or template.runner


# --- `llmrun templates` ---------------------------------------------------------------------

templates_app = typer.Typer(
    help="Saved system prompts with a runner, model and options; `llmrun chat -t NAME` uses one. "
    "Without a command: the list.",
    invoke_without_command=True,
)


@templates_app.callback()
def templates_main(ctx: typer.Context) -> None:
    """Saved system prompts with a runner, model and options; `llmrun chat -t NAME` uses one.
    Without a command: the list."""
    if ctx.invoked_subcommand is None:
        list_templates(as_json=False)


@templates_app.command("list")
def list_templates(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object, name -> template."),
) -> None:
    """The saved templates, with their runner, model and system prompt."""
    from .app import reporting

    with reporting(as_json=as_json):
        templates = [load_template(name) for name in template_names()]
        if as_json:
            print(json.dumps({t.name: t.as_dict() for t in templates}, indent=2))
            return
        if not templates:
            print(f"no templates in {templates_dir()}", file=sys.stderr)
            print("llmrun: hint: `llmrun templates save NAME --system ...` saves one", file=sys.stderr)
            return
        width = max(len(t.name) for t in templates)
        for t in templates:
            target = "/".join(part for part in (t.runner, t.model) if part) or "-"
            system = (t.system or "").replace("\n", " ")
            print(f"{t.name:<{width}}  {target:<24}  {system[:60] + ('…' if len(system) > 60 else '')}".rstrip())


@templates_app.command("show")
def show_template(name: str = typer.Argument(..., metavar="NAME")) -> None:
    """Print a template's file."""
    from .app import reporting

    with reporting():
        load_template(name)  # checked first: a broken file is named, not printed as if fine
        print(template_path(name).read_text(encoding="utf-8"), end="")


@templates_app.command("path")
def templates_path() -> None:
    """Print the directory of the templates ($XDG_CONFIG_HOME/llmrun/templates)."""
    print(templates_dir())


@templates_app.command("delete")
def delete_template(name: str = typer.Argument(..., metavar="NAME")) -> None:
    """Delete a template."""
    from .app import reporting

    with reporting():
        path = template_path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ConfigError(f"no template named {name!r}") from None
        print(f"deleted {path}", file=sys.stderr)


def save_template(
    name: str = typer.Argument(..., metavar="NAME"),
    system: Optional[str] = typer.Option(None, "--system", "-s", metavar="TEXT", help="System prompt."),
    runner: Optional[str] = typer.Option(None, "--runner", "-r", metavar="NAME", help="Runner name or alias."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="NAME", help="Model, as the tool knows it."),
    option: Optional[list[str]] = typer.Option(
        None, "--option", "-o", metavar="KEY VALUE", help="Runner option (repeatable); VALUE is JSON or text."
    ),
    temperature: Optional[float] = typer.Option(None, "--temperature", metavar="T", help="Sampling temperature."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", metavar="N", min=1, help="Longest answer."),
    schema: Optional[str] = typer.Option(
        None, "--schema", metavar="JSON|FILE", help="Answer with JSON of this schema."
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Replace a template of that name."),
) -> None:
    """Save a template: a system prompt with a runner, model and options."""
    from .app import reporting

    with reporting():
        from .. import private
        from .chat import parse_options, read_schema

        path = template_path(name)
        if path.exists() and not force:
            raise typer.BadParameter(f"a template named {name!r} exists; --force replaces it", param_hint="NAME")
        pairs = [tuple(json.loads(packed)) for packed in option or []]
        template = Template(
            name=name,
            system=system,
            runner=runner,
            model=model,
            options=parse_options(pairs),  # type: ignore[arg-type]
            sampling={k: v for k, v in {"temperature": temperature, "max_tokens": max_tokens}.items() if v is not None},
            schema=read_schema(schema) if schema is not None else None,
        )
        if not template.as_dict():
            raise typer.BadParameter("give what the template holds: --system, --runner, --model, -o, ...")
        path.parent.mkdir(parents=True, exist_ok=True)
        private.write_atomically(path, template_toml(template))
        print(f"saved {path}", file=sys.stderr)
