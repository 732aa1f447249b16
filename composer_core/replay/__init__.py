"""Channel 3's data (composer-core's own research channel, not part of Cursor's recipe): replay agent traces
with N teachers (teachers, their config, a call cache) and turn their agreement into preference pairs."""
