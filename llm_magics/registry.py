"""Methods are plugins, found through the entry-point group `llm_magics.methods`.

Discovery reads entry-point names only; a method's module is imported the
first time it is used, so `%load_ext` stays fast. A plugin that fails to
import is kept with the reason and listed by `%llm`; it never breaks the
extension or the other methods.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import traceback
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import options as opts
from .errors import UsageError, did_you_mean
from .method import Method

GROUP = "llm_magics.methods"


@dataclass
class Entry:
    name: str
    target: str                 # "module:Class"
    origin: str                 # the distribution that declared it
    _loaded: type[Method] | None = field(default=None, repr=False)
    error: str | None = None    # one line: why it could not be imported
    _ep: importlib.metadata.EntryPoint | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "imported" if self._loaded else "not imported yet"

    def load(self) -> type[Method]:
        if self._loaded:
            return self._loaded
        if self.error:
            raise UsageError(f"method {self.name!r} ({self.origin}) could not be imported: {self.error}")
        try:
            cls = self._ep.load() if self._ep else _load_target(self.target)
            _validate(self.name, cls)
        except Exception as exc:  # a broken plugin must not break the extension
            self.error = _reason(exc)
            self.traceback = traceback.format_exc()
            raise UsageError(f"method {self.name!r} ({self.origin}) could not be imported: {self.error}") from None
        self._loaded = cls
        return cls


def _load_target(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _validate(name: str, cls) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a llm_magics.plugin.Method subclass")
    if cls.name != name:
        raise TypeError(f"entry point {name!r} points at a method named {cls.name!r}: "
                        "the entry point's name must equal Method.name")
    if not hasattr(cls, "Options") or not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__} declares no Options dataclass")
    for word, command in cls.commands.items():
        if not callable(getattr(cls, command.handler, None)):
            raise TypeError(f"{cls.__name__}.commands[{word!r}] names handler {command.handler!r}, "
                            f"which {cls.__name__} does not define")
        if not dataclasses.is_dataclass(command.options):
            raise TypeError(f"{cls.__name__}.commands[{word!r}].options is not a dataclass")


# Import names whose distribution is called something else.
DISTRIBUTIONS = {"sklearn": "scikit-learn", "faiss": "faiss-cpu", "cv2": "opencv-python", "PIL": "pillow",
                 "yaml": "pyyaml", "bs4": "beautifulsoup4", "llama_cpp": "llama-cpp-python",
                 "google": "protobuf", "dateutil": "python-dateutil", "attr": "attrs", "skimage": "scikit-image",
                 "Bio": "biopython", "OpenSSL": "pyopenssl", "magic": "python-magic", "docx": "python-docx",
                 "fitz": "pymupdf", "jwt": "pyjwt", "serial": "pyserial", "usb": "pyusb", "zmq": "pyzmq"}


def install_hint(module: str) -> str:
    """`pip install ...` for a missing module: its distribution's name, not the module's."""
    top = module.split(".")[0]
    return f"pip install {DISTRIBUTIONS.get(top, top.replace('_', '-'))}"


def _reason(exc: Exception) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"missing package {exc.name!r} ({install_hint(exc.name)})"
    return f"{type(exc).__name__}: {exc}"


class Registry:
    def __init__(self):
        self.entries: dict[str, Entry] = {}
        self.conflicts: list[str] = []
        self.shadowed: list[Entry] = []     # declarations that lost a name to another distribution

    def discover(self) -> "Registry":
        """Read entry-point names (no plugin module is imported here)."""
        seen: dict[str, Entry] = {}
        for ep in importlib.metadata.entry_points(group=GROUP):
            origin = ep.dist.name if ep.dist else "?"
            if ep.name in seen:  # two distributions claim one name: keep the first, say so
                if origin == seen[ep.name].origin and ep.value == seen[ep.name].target:
                    continue  # one distribution seen twice on the path
                self.conflicts.append(f"{ep.name!r} is declared by {seen[ep.name].origin} and {origin}; "
                                      f"using {seen[ep.name].origin}'s")
                self.shadowed.append(Entry(ep.name, ep.value, origin,
                                           error=f"conflict: {seen[ep.name].origin} also declares "
                                                 f"{ep.name!r}, and its method is the one used"))
                continue
            seen[ep.name] = Entry(ep.name, ep.value, origin, _ep=ep)
        self.entries = dict(sorted(seen.items()))
        return self

    def add(self, cls: type[Method], origin: str = "runtime") -> Entry:
        """Register a method class directly (tests, interactive experiments)."""
        _validate(cls.name, cls)
        entry = Entry(cls.name, f"{cls.__module__}:{cls.__qualname__}", origin, _loaded=cls)
        self.entries[cls.name] = entry
        return entry

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            raise UsageError(f"unknown method {name!r}" + did_you_mean(name, self.entries))
        return self.entries[name]

    def load(self, name: str) -> type[Method]:
        return self.get(name).load()

    def names(self) -> list[str]:
        return list(self.entries)


_registry: Registry | None = None


def registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = Registry().discover()
    return _registry


def rediscover() -> Registry:
    """Re-read entry points (after pip-installing a plugin in a running kernel)."""
    global _registry
    importlib.invalidate_caches()
    _registry = Registry().discover()
    return _registry


# ---- the magic line -------------------------------------------------------------------

class MagicLine(NamedTuple):
    method: type[Method]
    command: str | None     # the subcommand's word; None for the main command
    options: Any


def asks_help(tokens: list[str]) -> bool:
    """`-h`/`--help` anywhere on the line: the magic shows the method's help instead of running it."""
    return any(t in ("-h", "--help") for t in tokens)


def command_word(cls: type[Method], tokens: list[str]) -> str | None:
    """The subcommand a line's first word names, or None for the main command."""
    if tokens and tokens[0] in cls.commands:
        return tokens[0]
    if cls.commands and tokens and not tokens[0].startswith("-") \
            and not any(s.positional for s in opts.specs(cls.main_command().options)):
        # A bare first word the main command cannot take is a misspelt command, not a stray argument.
        raise UsageError(f"%{cls.name}: unknown command {tokens[0]!r}" + did_you_mean(tokens[0], list(cls.commands))
                         + f" (commands: {', '.join(cls.commands)})")
    return None


def parse_magic_line(name: str, line: str | list[str], cell: str | None = None,
                     reg: Registry | None = None) -> MagicLine:
    """`%name line` (or `%%name line` with its cell body) → (method class, command word, options).

    The one parser of a method's magic line: the magics, the tune form and sweeps all call it, so a
    line means one run wherever it is typed. `-h`/`--help` is the magic's to show (`asks_help`)."""
    cls = (reg or registry()).load(name)
    tokens = opts.split_line(line) if isinstance(line, str) else list(line)
    word = command_word(cls, tokens)
    extra = {}
    if cell is not None:
        if not cls.cell_option or word:
            raise UsageError(f"%%{name} takes no cell body; use the line magic %{name}")
        extra[cls.cell_option] = cell
    options = opts.parse_line(cls.command(word).options, tokens[1:] if word else tokens,
                              f"{name} {word}" if word else name, extra=extra)
    return MagicLine(cls, word, options)
