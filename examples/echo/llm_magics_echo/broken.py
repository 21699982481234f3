"""A plugin whose dependency is missing: the extension must list it, not break."""
import not_a_real_package_for_llm_magics  # noqa: F401
