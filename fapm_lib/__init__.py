"""fapm_lib: FAPM (Fast Adaptive Patch Memory) and a PatchCore baseline, thin and tested."""
__version__ = "0.1.0"
