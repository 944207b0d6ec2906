"""Scale: fitting within a memory budget through a disk store of region features."""
