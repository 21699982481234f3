"""The GPU-aware engine: device and dtype, batching, features (and training)."""
