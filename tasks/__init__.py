"""Built-in task plugins, registered through entry points (nothing registers on import)."""
