"""Experiments that measure what the composer channels do: the evidence ladder."""
