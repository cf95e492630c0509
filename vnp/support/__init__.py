"""Support for every layer: typed configuration, user-facing errors, safe path checks."""
