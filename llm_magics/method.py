"""What a method is: options declared once, a `run`, and the Result it returns.

Plugins import these through `llm_magics.plugin` (the public surface; the guide is
docs/plugins.md). A third-party method subclasses `Method`, declares an options
dataclass and registers the class under the entry-point group `llm_magics.methods`;
the entry point's name must equal the class's `name`:

    [project.entry-points."llm_magics.methods"]
    mymethod = "my_package.module:MyMethod"

Subcommands (`%index build ...`, `%lora save ...`) are declared in
`commands`: each maps a word to an options dataclass and the name of the
method that handles it (registration checks that it exists).

Options the runner understands wherever an options class declares them (through
the bundles in `common_options`): `out` (bind the Result to a variable; the magic
returns nothing), `bg` (run in a thread, return a `RunHandle`), `device` (the
runner measures peak memory on the device `ctx.device(options.device)` gives).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from . import options as opts
from .progress.events import format_metric
from .records import RECORD_KEYS, run_title

if TYPE_CHECKING:  # pandas is imported by the runs, not by `%load_ext`
    import pandas as pd


@dataclass(frozen=True)
class Command:
    options: type
    handler: str          # name of the Method's function: handler(self, options, ctx)
    summary: str = ""
    records_run: bool = True   # training/evaluating commands are recorded; `list`, `save` are not
    launchable: bool = False   # takes --devices/--nodes above 1 (torchrun workers: llm_magics.launch)

    @property
    def launcher(self) -> str:
        """The Method's function the runner calls instead of `handler` when --devices/--nodes ask for workers:
        `launch_<handler>(self, options, ctx)`, which sends the same command to torchrun workers. Without one
        the runner runs the method as a whole on the workers (`llm_magics.launch.run_launched`)."""
        return f"launch_{self.handler}"


class Method:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type]
    # For cell magics: the option that receives the cell's body (e.g. the prompt template).
    cell_option: ClassVar[str | None] = None
    # Subcommands by their first word; the main command runs when the first word isn't one.
    commands: ClassVar[dict[str, Command]] = {}
    # The main command (`run`) takes --devices/--nodes above 1; a subcommand says so on its Command.
    launchable: ClassVar[bool] = False
    # The Result classes a launched run of this method comes back as, beside its `result_class` (the kernel
    # builds no other class from a worker's result.json). Default: the plain Result (set below it).
    result_classes: ClassVar[tuple[type, ...]] = ()
    # What --seed controls in this method's runs, in words ("data split", "head init"): each Result says so.
    seed_controls: ClassVar[tuple[str, ...]] = ()

    def run(self, options, ctx) -> "Result":  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def main_command(cls) -> Command:
        return Command(cls.Options, "run", cls.summary, launchable=cls.launchable)

    @classmethod
    def command(cls, word: str | None) -> Command:
        return cls.commands.get(word) if word else cls.main_command()

    @classmethod
    def help(cls) -> str:
        usage = f"%%{cls.name} [options]\n<cell body>" if cls.cell_option else None
        if cls.commands:
            usage = (usage or f"%{cls.name} [options]") + f"\n%{cls.name} COMMAND ...  ({', '.join(cls.commands)}; below)"
        parts = [opts.help_text(cls.Options, cls.name, cls.summary, usage=usage)]
        for word, cmd in cls.commands.items():
            parts.append("\n" + opts.help_text(cmd.options, f"{cls.name} {word}", cmd.summary))
        name = cls.name
        parts.append(f"\nPython: llm_magics.api.{name}(...) takes the same options as keyword arguments.")
        return "\n".join(parts)


@dataclass
class Result:
    """One run's outcome; the run store holds the same fields (`RECORD_KEYS`).

    Subclass it with `@dataclass` to add fields and methods (`.predict`, `.save`): the
    one-line repr is kept (a dataclass subclass would otherwise print every field).
    """
    method: str
    metrics: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    data_fingerprint: str = ""
    trainable_params: int = 0
    total_params: int = 0
    wall_s: float = 0.0
    rows_per_s: float | None = None
    tokens_per_s: float | None = None
    peak_mem_bytes: int = 0
    device: str = ""
    dtype: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    status: str = "ok"                      # ok | stopped
    label_names: list[str] | None = None
    tables: dict[str, "pd.DataFrame"] = field(default_factory=dict, repr=False)
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)
    sweep_id: str | None = None             # set when a %llm sweep ran it
    command: str | None = None              # the subcommand that ran ("dpo" of %rlhf dpo), set by the runner
    # one row per scored test item (runs/predictions.py); pairs runs in %llm compare --paired
    predictions: "pd.DataFrame | None" = field(default=None, repr=False)
    parent_id: str | None = None            # the --seeds aggregate this run is one seed of (set by the runner)
    seeded: str = ""                        # what the seed controlled, in words (set by the runner)

    # A launched run's rank 0 writes the trained weights beside the Result for the kernel to rebuild from, unless
    # the Result's model already lives in the folders its artifacts name (a reward model's, a policy's).
    model_in_folders: ClassVar[bool] = False

    def restore(self, options, rebuild) -> None:
        """The one way a launched run's Result becomes usable in the kernel, from what rank 0 saved (the
        folders its artifacts name). `rebuild()`, given when rank 0 wrote trained weights, returns (model,
        tokenizer) built on the CPU as the method builds them. One-process runs never call it."""

    def record(self) -> dict[str, Any]:
        """The row the run store keeps."""
        return {k: getattr(self, k) for k in RECORD_KEYS}

    @property
    def title(self) -> str:
        """The method as the user typed it: "probe", "rlhf dpo"."""
        return run_title(self.method, self.command)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # @dataclass adds a field-by-field __repr__ unless the class defines one itself.
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = Result.__repr__

    def summary_line(self) -> str:
        bits = [f"{self.title} · run {self.run_id}", self.model, f"{self.device} {self.dtype}".strip(),
                f"{self.wall_s:.1f} s"]
        if self.rows_per_s:
            bits.append(f"{self.rows_per_s:,.0f} rows/s")
        if self.tokens_per_s:
            bits.append(f"{self.tokens_per_s:,.0f} tokens/s")
        if self.peak_mem_bytes:
            bits.append(f"peak {self.peak_mem_bytes / 2**20:,.0f} MiB")
        if self.trainable_params:
            share = f" ({100 * self.trainable_params / self.total_params:.3g}%)" if self.total_params else ""
            bits.append(f"{self.trainable_params:,} trainable{share}")
        if self.status != "ok":
            bits.append(self.status.upper())
        return " · ".join(b for b in bits if b)

    def __repr__(self) -> str:
        metrics = ", ".join(f"{k}={format_metric(v)}" for k, v in self.metrics.items())
        return f"<{type(self).__name__} {self.summary_line()} | {metrics}>"

    def _repr_html_(self) -> str:
        from .progress.theme import FAINT, WARN, scroll_box
        from .runs.figures import png_html
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{format_metric(v)}</td></tr>"
                       for k, v in self.metrics.items())
        parts = [f"<div><b>{html.escape(self.summary_line())}</b></div>",
                 f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"]
        for name, table in self.tables.items():
            parts.append(f"<div><i>{html.escape(name)}</i></div>"
                         + scroll_box(table.to_html(index=False, float_format=lambda v: f"{v:.4g}")))
        parts += [png_html(png, alt=name) for name, png in self.figures.items()]
        parts += [f"<div style='color:{WARN}'>{html.escape(n)}</div>" for n in self.notes]
        if self.seeded:
            parts.append(f"<div style='color:{FAINT};font-size:11px'>{html.escape(self.seeded)}</div>")
        if self.artifacts:
            parts.append(f"<div style='color:{FAINT};font-size:11px'>"
                         + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in self.artifacts.items())
                         + "</div>")
        return "".join(parts)


Method.result_classes = (Result,)
