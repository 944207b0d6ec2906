"""What the process and the machine provide: atomic files, the C allocator, memory budgets,
timing, jobs run here or on Dask."""
