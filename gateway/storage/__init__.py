"""Storage: the node's database is the source of truth and the sequencer of its log."""
