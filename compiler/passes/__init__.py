"""lowbit's IR passes, one file each, named after the pass."""
