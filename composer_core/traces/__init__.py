"""Agent traces: contracts, format ingesters (one module per real format), error turns, hints, self-distillation
targets."""
