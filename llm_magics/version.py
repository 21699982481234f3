"""The package's version, in a leaf module so that what records it (an exported job) needs no package import."""
__version__ = "0.1.0"
