"""The `llmrun` command.

Only typer and llmrun's error classes are imported here; each command imports what it needs
when it runs, so `llmrun --help` loads neither pydantic nor rich (rich only for help on a
terminal) nor any runner.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from typer.core import TyperCommand

from ..errors import Cancelled, LlmrunError, RunnerError
from . import render

app = typer.Typer(
    name="llmrun",
    help="Use the AI command-line tools you already have (claude, codex, gemini, qwen, ...) through one interface.",
    epilog="Exit codes: 0 ok, 1 failure or unhealthy runner, 2 bad usage or config, 3 tool not installed, "
    "4 not logged in, 5 rate limited, 6 service unavailable, 7 unknown model, 8 context too long, "
    "9 session not found, 10 timeout, 11 tool failed, 12 unreadable output, 13 output too large, "
    "14 unsupported, 15 overloaded, 130 cancelled.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Where the config file is, and the settings in effect.", no_args_is_help=True)
app.add_typer(config_app, name="config")


# --- errors ---------------------------------------------------------------------------------


def _fail(exc: LlmrunError, *, as_json: bool) -> NoReturn:
    if as_json:
        error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
        if exc.hint:
            error["hint"] = exc.hint
        if isinstance(exc, RunnerError):
            error["runner"] = exc.runner
            error["exit_code"] = exc.process_exit_code
            if exc.stderr:
                error["stderr"] = exc.stderr[-2000:]
        print(json.dumps({"error": error}))
    for line in render.error_lines(exc, debug=render.flags.debug):
        print(line, file=sys.stderr)
    raise typer.Exit(exc.exit_code)


def _is_usage_exception(exc: BaseException) -> bool:
    """typer's and click's own exceptions (exit, bad parameter) must reach them untouched."""
    return type(exc).__module__.split(".")[0] in ("typer", "click")


@contextmanager
def reporting(*, as_json: bool = False) -> Iterator[None]:
    """Every failure becomes one line (plus hints) and its exit code; a traceback only with --debug."""
    try:
        yield
    except LlmrunError as exc:
        if render.flags.debug:
            traceback.print_exc()
        _fail(exc, as_json=as_json)
    except KeyboardInterrupt:
        _fail(Cancelled("cancelled (Ctrl-C)"), as_json=as_json)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other Unix tools do.
        _silence_stdout()
        raise typer.Exit(141) from None
    except Exception as exc:
        if _is_usage_exception(exc) or render.flags.debug:
            raise
        print(f"llmrun: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("llmrun: hint: this is unexpected; `llmrun --debug ...` shows where it happened", file=sys.stderr)
        raise typer.Exit(1) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the flush at exit cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a test runner's stdout has no descriptor
        pass


# --- options shared by commands -------------------------------------------------------------


def _complete_runner(incomplete: str) -> list[str]:
    from .. import registry

    names = [*registry.runner_names(), *getattr(registry, "ALIASES", {})]
    return [name for name in names if name.startswith(incomplete)]


def _runner_option(help: str) -> Any:
    return typer.Option(None, "--runner", "-r", metavar="NAME", help=help, autocompletion=_complete_runner)


def _refresh_option() -> Any:
    return typer.Option(False, "--refresh", help="Check the tools again instead of using what was found lately.")


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"llmrun {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", "-V", help="Print the version and exit.", callback=_show_version, is_eager=True
    ),
    debug: bool = typer.Option(
        False, "--debug", envvar="LLMRUN_DEBUG", help="On errors, show the traceback and the tool's stderr."
    ),
    no_color: bool = typer.Option(False, "--no-color", help="No colours (as does the NO_COLOR variable)."),
) -> None:
    """Use the AI command-line tools you already have (claude, codex, gemini, qwen, ...) through one interface."""
    render.flags.debug = debug
    render.flags.no_color = no_color


# --- chat -----------------------------------------------------------------------------------


class ChatCommand(TyperCommand):
    """`--option KEY VALUE` takes two values, which typer cannot declare for a repeated option:
    each pair is packed into one JSON argument before parsing."""

    PAIR_OPTIONS = ("--option", "-o")

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self.pack_pairs(args, resilient=bool(ctx.resilient_parsing)))

    def pack_pairs(self, args: list[str], *, resilient: bool = False) -> list[str]:
        takes_value = {
            opt
            for param in self.params
            if getattr(param, "param_type_name", "") == "option" and not getattr(param, "is_flag", False)
            for opt in param.opts
            if opt not in self.PAIR_OPTIONS
        }
        packed: list[str] = []
        rest = iter(args)
        for arg in rest:
            if arg == "--":
                packed += [arg, *rest]
                break
            if arg in takes_value:
                packed += [arg, *[value for value in [next(rest, None)] if value is not None]]
                continue
            key: str | None
            if arg in self.PAIR_OPTIONS:
                key = next(rest, None)
            elif arg.startswith("--option="):
                key = arg.partition("=")[2]
            else:
                packed.append(arg)
                continue
            value = next(rest, None)
            if key is None or value is None:
                if resilient:
                    break
                raise typer.BadParameter("needs two values: KEY VALUE", param_hint="'--option'")
            packed += ["--option", json.dumps([key, value])]
        return packed


@app.command(cls=ChatCommand, short_help="Ask a runner; with no prompt on a terminal, chat.")
def chat(
    prompt: Optional[str] = typer.Argument(
        None,
        metavar="PROMPT",
        help="The prompt; `-` reads it from stdin. None on a terminal: an interactive conversation.",
    ),
    runner: Optional[str] = _runner_option("Runner name or alias (default: $LLMRUN_RUNNER, config, first ready)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", metavar="NAME", help="Model or alias, as the tool knows it."
    ),
    system: Optional[str] = typer.Option(None, "--system", "-s", metavar="TEXT", help="System prompt."),
    continue_: bool = typer.Option(False, "--continue", "-c", help="Continue the last conversation."),
    session: Optional[str] = typer.Option(None, "--session", metavar="ID", help="Continue this session of the tool."),
    option: Optional[list[str]] = typer.Option(
        None, "--option", "-o", metavar="KEY VALUE", help="Runner option (repeatable); VALUE is JSON or text."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one ChatResponse as JSON."),
    as_jsonl: bool = typer.Option(False, "--jsonl", help="Print one ChatChunk per line as JSON."),
    no_stream: bool = typer.Option(False, "--no-stream", help="Print the answer only when complete."),
    markdown: bool = typer.Option(False, "--markdown", help="Render the answer as Markdown (on a terminal)."),
    hide_thinking: bool = typer.Option(False, "--hide-thinking", help="Do not show the model's thinking."),
    usage: bool = typer.Option(False, "--usage", "-u", help="Print tokens, cost and timing on stderr."),
    timeout: Optional[float] = typer.Option(None, "--timeout", metavar="SECONDS", help="Hard time limit in seconds."),
    allow_tools: bool = typer.Option(False, "--allow-tools", help="Let the tool use its own agent tools."),
    cwd: Optional[Path] = typer.Option(
        None,
        "--cwd",
        metavar="DIR",
        help="Working directory for the tool.",
        exists=True,
        file_okay=False,
        resolve_path=True,
    ),
    all_: bool = typer.Option(
        False,
        "--all",
        help="Ask every runner of -r at once, answers side by side; exit 0 only if all answered.",
    ),
    schema: Optional[str] = typer.Option(
        None,
        "--schema",
        metavar="JSON|FILE",
        help="Answer with JSON matching this JSON schema (given inline or as a file); validated, asked once more.",
    ),
    temperature: Optional[float] = typer.Option(None, "--temperature", metavar="T", help="Sampling temperature."),
    max_tokens: Optional[int] = typer.Option(
        None, "--max-tokens", metavar="N", min=1, help="Longest answer, in tokens."
    ),
    top_p: Optional[float] = typer.Option(None, "--top-p", metavar="P", help="Nucleus sampling."),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="N", help="Seed, for tools whose model takes one."),
    stop: Optional[list[str]] = typer.Option(
        None, "--stop", metavar="TEXT", help="End the answer before this text (repeatable)."
    ),
    strict_params: bool = typer.Option(
        False, "--strict-params", help="Refuse a parameter the runner cannot honour instead of warning."
    ),
    no_log: bool = typer.Option(False, "--no-log", help="Keep this conversation out of the log (`llmrun logs`)."),
    attachment: Optional[list[str]] = typer.Option(
        None,
        "--attachment",
        "-a",
        metavar="PATH|URL|-",
        help="Attach an image (PNG, JPEG, GIF, WebP): a file, an http(s) URL, or - for stdin (repeatable).",
    ),
    template: Optional[str] = typer.Option(
        None, "--template", "-t", metavar="NAME", help="Use a saved template (`llmrun templates`); flags win over it."
    ),
) -> None:
    """Send a prompt to a runner and stream the answer; with no prompt on a terminal, chat."""
    if timeout is not None and timeout <= 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint="'--timeout'")
    with reporting(as_json=as_json or as_jsonl):
        from .chat import ChatOptions, parse_options, read_schema, run
        from .selection import check_config

        check_config()
        pairs = [tuple(json.loads(packed)) for packed in option or []]
        opts = ChatOptions(
            model=model,
            system=system,
            timeout=timeout,
            allow_tools=allow_tools,
            cwd=str(cwd) if cwd else None,
            options=parse_options(pairs),  # type: ignore[arg-type]
            as_json=as_json,
            as_jsonl=as_jsonl,
            no_stream=no_stream,
            show_thinking=not hide_thinking,
            markdown=markdown,
            usage=usage,
            json_schema=read_schema(schema) if schema is not None else None,
            sampling={
                "temperature": temperature,
                "max_tokens": max_tokens,
                "top_p": top_p,
                "seed": seed,
                "stop": stop or None,
                "strict_params": strict_params,
            },
        )
        if template is not None:
            from .templates import apply_template, load_template

            runner = apply_template(load_template(template), opts, runner)
        from .aliases import resolve_alias

        runner, opts.model = resolve_alias(runner, opts.model)
        if attachment:
            from .attachments import read_attachments
            from .chat import wants_interactive

            if wants_interactive(prompt, opts):
                raise typer.BadParameter("an attachment goes with a prompt", param_hint="'--attachment'")
            opts.images = read_attachments(attachment, prompt=prompt)
        if not no_log:
            from ..logs import Recorder, enabled

            opts.log = Recorder() if enabled() else None
        if all_:
            from .fanout import run_all

            code = run_all(prompt=prompt, spec=runner, session=session, continuing=continue_, opts=opts)
        else:
            code = run(prompt=prompt, runner_name=runner, session=session, continuing=continue_, opts=opts)
    raise typer.Exit(code)


# --- runners, models, health ----------------------------------------------------------------


@app.command(short_help="Known runners: installed, logged in, capabilities.")
def runners(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list."),
    refresh: bool = _refresh_option(),
) -> None:
    """Every runner llmrun knows: installed, version, logged in, default model, capabilities."""
    with reporting(as_json=as_json):
        from .selection import check_config
        from .views import print_runners, runner_rows

        check_config()
        print_runners(runner_rows(refresh=refresh), as_json=as_json)


def _selected(names: list[str]) -> list[str]:
    """Canonical names, each known (else RunnerNotFound), without repeats."""
    from ..registry import canonical_name, get_runner_class

    for name in names:
        get_runner_class(name)
    return list(dict.fromkeys(canonical_name(name) for name in names))


@app.command(short_help="Models per runner, built in and discovered.")
def models(
    runner: Optional[list[str]] = _runner_option("Only this runner (repeatable); default: every runner."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of models."),
    all_: bool = typer.Option(False, "--all", help="Every model, also of runners that list hundreds."),
    refresh: bool = _refresh_option(),
) -> None:
    """Models per runner: built in, and discovered from the tool where it can list them."""
    with reporting(as_json=as_json):
        from ..registry import runner_names
        from .selection import check_config
        from .views import model_list, print_models

        check_config()
        names = _selected(runner) if runner else runner_names()
        print_models(model_list(names, refresh=refresh), as_json=as_json, names=names, every=not runner, show_all=all_)


class Format(str, Enum):
    table = "table"
    json = "json"
    github = "github"


@app.command(short_help="Check runners; exit 0 only if all are ok (for CI).")
def health(
    runner: Optional[list[str]] = _runner_option("Runner to check (repeatable); default: every installed one."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of HealthReports (= --format json)."),
    probe: bool = typer.Option(False, "--probe", help="Also send a tiny real prompt and time it."),
    fmt: Format = typer.Option(
        Format.table,
        "--format",
        "-f",
        metavar="FORMAT",
        help="table, json, or github (::error annotations for GitHub Actions).",
    ),
    refresh: bool = _refresh_option(),
) -> None:
    """Check that runners are installed, current and logged in; exit 0 only if all are ok."""
    kind = "json" if as_json else fmt.value
    with reporting(as_json=kind == "json"):
        from .selection import check_config, installed_runner_names
        from .views import checked, print_health

        check_config()
        names = _selected(runner) if runner else installed_runner_names()
        if not names:
            _none_installed(kind)
        reports = checked(names, probe=probe, refresh=refresh)
        print_health(reports, fmt=kind)
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


def _none_installed(kind: str) -> NoReturn:
    from ..registry import runner_names
    from .views import github_error

    message = "no runner is installed (looked for: " + ", ".join(runner_names()) + ")"
    if kind == "json":
        print("[]")
    elif kind == "github":
        print(github_error("llmrun health", message))
    print(f"llmrun: {message}", file=sys.stderr)
    print("llmrun: hint: `llmrun runners` shows how to install each tool", file=sys.stderr)
    raise typer.Exit(1)


# --- config ---------------------------------------------------------------------------------


@config_app.command("path", short_help="Print the config file's path.")
def config_path_command() -> None:
    """Print the config file's path ($LLMRUN_CONFIG, else $XDG_CONFIG_HOME/llmrun/config.toml)."""
    from ..config import config_path

    print(config_path())


@config_app.command("show", short_help="The settings in effect per runner, as TOML (or --json).")
def config_show(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of TOML.")) -> None:
    """The settings in effect per runner (file, then LLMRUN_* variables), as TOML."""
    with reporting(as_json=as_json):
        from .views import config_toml, effective_config

        config = effective_config()
        print(json.dumps(config, indent=2) if as_json else config_toml(config), end="\n" if as_json else "")


def main() -> None:
    app(prog_name="llmrun")


from .serve import serve  # noqa: E402 - imports only typer; the server loads when it runs

app.command(short_help="Serve the OpenAI, Anthropic and Ollama APIs and MCP over the runners.")(serve)

from .mcp import mcp  # noqa: E402 - imports only typer; the mcp SDK loads when it runs

app.command(short_help="Serve MCP over stdio: the runners as tools of Claude Code, Codex, ...")(mcp)

from .logs import logs_app  # noqa: E402 - imports only typer; the log loads when it runs

app.add_typer(logs_app, name="logs", short_help="The prompts and answers of `llmrun chat`; usage and cost totals.")

from .templates import save_template, templates_app  # noqa: E402 - imports only typer

templates_app.command("save", cls=ChatCommand)(save_template)  # `-o KEY VALUE`, as in chat
app.add_typer(templates_app, name="templates", short_help="Saved system prompts with a runner, model and options.")

from .aliases import aliases  # noqa: E402 - imports only typer; the config loads when it runs

app.command(short_help="The aliases of [server.aliases]: `-r ALIAS` for chat, `model` for the daemon.")(aliases)
