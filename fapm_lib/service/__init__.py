"""The HTTP service and the drop-folder watcher: a fitted, calibrated model kept loaded and
scoring parts as they come (``fapm serve``, ``fapm watch``; [Serve](../../docs/serve.md)).

By role: the live model and its atomic swap (``model_slot``), the micro-batcher with its bounded
queue (``micro_batch``), what the batcher runs (``part_scoring``), request bodies and image
decoding with their limits (``request_body``), answers as JSON (``answers``), counters in the
Prometheus text format (``counters``), the Starlette application (``http_app``) and uvicorn on a
bound socket (``http_server``), the page's static files (``static/``), the closed-loop load
client (``load_client``), and for ``fapm watch`` the results journal (``journal``) and the folder
scan (``drop_folder``). Only ``http_app``, ``http_server`` and ``load_client``'s users need the
``serve`` extra (Starlette, uvicorn, python-multipart); the watcher needs nothing more.
"""
