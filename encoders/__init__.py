"""Built-in encoder plugins, registered through entry points (nothing registers on import)."""
