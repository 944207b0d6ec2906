"""The method: backbone features, regions, the adaptive coreset, per-region memories, scoring, and
the two models as ``torch.nn.Module`` (FAPM and the PatchCore baseline)."""
