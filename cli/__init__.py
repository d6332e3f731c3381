"""The `adapterreg` command line: a thin shell over registry.client."""
