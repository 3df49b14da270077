"""Ways to run the networks, behind one registry (:mod:`ancis_fast.backends.registry`)."""
from .registry import AUTO, AUTO_BACKENDS, BACKEND_CHOICES, BACKENDS, REGISTRY, Backend, build, resolve_backend, static_compiler

__all__ = ["AUTO", "AUTO_BACKENDS", "BACKEND_CHOICES", "BACKENDS", "REGISTRY", "Backend", "build", "resolve_backend", "static_compiler"]
