"""Graph builders: which actors, how they connect, live vs offline policy."""
