"""Deployment: one ONNX / OpenVINO graph (uint8 image in, decision out), its INT8 backbone,
running exports (``ExportedModel``, the standalone ``run_fapm.py``), runtime timings."""
