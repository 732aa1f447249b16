"""The `composer-core` command: `main` builds the parser; one module per command group (model, traces, train)."""
