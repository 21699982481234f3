"""What `%index build --from` names, turned into documents: a table of `text` and `source`.

A folder or a file (txt, md, rst, html, pdf when pypdf is installed; csv, tsv,
jsonl, json, parquet by a text column), a notebook variable (DataFrame, list
of strings or dicts, Series, datasets Dataset) or a dataset name.
"""
from __future__ import annotations

import html.parser
from pathlib import Path
from typing import Any

import pandas as pd

from ..data import fingerprint, infer_text_column, load_frame, lookup, require_column
from ..data.load import read_file
from ..errors import UsageError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + (".pdf",) + TABLE_SUFFIXES


def load_documents(ref: Any, namespace: dict | None, text: str | None = None, doc_id: str | None = None,
                   notes: list[str] | None = None) -> pd.DataFrame:
    """Documents with columns `text` and `source` (unique per document); UsageError on a mistake."""
    notes = notes if notes is not None else []
    if ref is None:
        raise UsageError("--from is required: a folder, a file, a DataFrame variable or a dataset name")
    obj = lookup(ref, namespace)
    if isinstance(obj, str):
        path = Path(obj).expanduser()
        if path.is_dir():
            docs = _folder(path, obj, text, doc_id, notes)
        elif path.is_file():
            docs = _file(path, obj, text, doc_id, notes)
        else:
            docs = _table(load_frame(obj, namespace, "--from"), obj, text, doc_id)
    else:
        frame = load_frame(obj, namespace, "--from")
        docs = _table(frame, object_label(ref, obj, frame, namespace), text, doc_id)
    docs = docs[docs["text"].str.strip() != ""].reset_index(drop=True)
    if docs.empty:
        raise UsageError(f"--from {describe(ref)}: no text found to index")
    return docs


def object_label(ref: Any, obj: Any, frame: pd.DataFrame, namespace: dict | None) -> str:
    """The source prefix of documents from an object: its variable's name, else its type and a
    content hash, so two different lists never share `source`s (add would replace, delete remove both)."""
    if isinstance(ref, str):
        return ref
    for name, value in (namespace or {}).items():
        if value is obj and not name.startswith("_"):
            return name
    return f"{type(obj).__name__}-{fingerprint(frame)[:8]}"


def describe(ref: Any) -> str:
    return ref if isinstance(ref, str) else f"<{type(ref).__name__}>"


def _folder(root: Path, shown: str, text: str | None, doc_id: str | None, notes: list[str]) -> pd.DataFrame:
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    inside = [p for p in files if _inside(p, root)]
    if len(inside) < len(files):
        notes.append(f"{len(files) - len(inside)} file(s) skipped: symlinks to outside {shown} (only what the folder "
                     "holds is indexed)")
    files = inside
    usable = [p for p in files if p.suffix.lower() in DOCUMENT_SUFFIXES]
    if not usable:
        raise UsageError(f"--from {shown}: no readable files in the folder "
                         f"(looked for {', '.join(DOCUMENT_SUFFIXES)})")
    skipped_pdf = 0
    frames = []
    for path in usable:
        label = str(Path(shown) / path.relative_to(root))
        if path.suffix.lower() == ".pdf" and not _has_pypdf():
            skipped_pdf += 1
            continue
        frames.append(_file(path, label, text, doc_id, notes))
    if skipped_pdf:
        notes.append(f"{skipped_pdf} pdf file(s) skipped: pip install pypdf to index them")
    if not frames:
        raise UsageError(f"--from {shown}: nothing readable in the folder (pip install pypdf for pdf files)")
    return pd.concat(frames, ignore_index=True)


def _inside(path: Path, root: Path) -> bool:
    """Whether the file, symlinks followed, lies inside `root` (a link out could pull in any file the user can read)."""
    return path.resolve().is_relative_to(root.resolve())


def _file(path: Path, label: str, text: str | None, doc_id: str | None, notes: list[str]) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return _table(read_file(path, "--from"), label, text, doc_id)
    if suffix in HTML_SUFFIXES:
        body = html_to_text(_read_text(path))
    elif suffix == ".pdf":
        body = pdf_to_text(path)
    elif suffix in TEXT_SUFFIXES or not suffix:
        body = _read_text(path)
    else:
        raise UsageError(f"--from {label}: cannot read {suffix} files; use {', '.join(DOCUMENT_SUFFIXES)}")
    return pd.DataFrame({"text": [body], "source": [label]})


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")


def _table(frame: pd.DataFrame, hint: str, text: str | None, doc_id: str | None) -> pd.DataFrame:
    if frame.empty:
        raise UsageError(f"--from {hint} is empty")
    column = infer_text_column(frame, text, role="--from")
    texts = frame[column].fillna("").astype(str)
    if doc_id:
        require_column(frame, doc_id, "--doc-id", "--from")
        sources = frame[doc_id].astype(str)
    else:
        sources = pd.Series([f"{hint}#{i}" for i in range(len(frame))])
    return pd.DataFrame({"text": texts.to_numpy(), "source": sources.to_numpy()})


def _has_pypdf() -> bool:
    import importlib.util
    return importlib.util.find_spec("pypdf") is not None


def pdf_to_text(path: Path) -> str:
    if not _has_pypdf():
        raise UsageError(f"--from {path}: reading pdf needs pypdf (pip install pypdf)")
    from pypdf import PdfReader
    try:
        return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
    except Exception as exc:  # a broken pdf is the user's file to fix
        raise UsageError(f"--from {path}: could not read the pdf ({type(exc).__name__})") from None


class _TextOfHtml(html.parser.HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
              "pre", "blockquote", "title", "table", "ul", "ol"}
    HIDDEN = {"script", "style", "noscript", "template"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML page, one block per paragraph (stdlib parser, no dependency)."""
    parser = _TextOfHtml()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    paragraphs, current = [], []
    for line in lines:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)
