"""The built-in methods, one room each. They are registered through this
project's own entry points (pyproject.toml), exactly as a plugin would be."""
