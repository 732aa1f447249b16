"""The `composer-core` command: one module per command group (main, traces, train)."""
