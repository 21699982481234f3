"""Moved to `llm_magics.testing` (public, for plugins' tests too); re-exported here."""
from llm_magics.testing import CHAT_TEMPLATE, build_bert, build_llama  # noqa: F401
