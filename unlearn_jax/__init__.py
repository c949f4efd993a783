"""unlearn_jax: per-instance privacy accounting and certified machine unlearning in JAX."""

__version__ = "0.1.0"
__all__ = ["__version__"]
