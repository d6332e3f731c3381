"""adapterreg: a registry and lifecycle service for PEFT adapters."""

__version__ = "0.1.0"
