"""Table specs, query contexts and table implementations."""
