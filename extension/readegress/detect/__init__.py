"""Detection: events, the sensitive catalogue and config, and the correlation core."""
