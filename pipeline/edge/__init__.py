"""The visual-only classifier outside the Python stack: ONNX export and a torch-free runner.

    python jobs/export.py --model outputs/run --out outputs/edge            # torch side
    python jobs/edge_score.py --model outputs/edge --videos clips/ --out preds  # edge side

Modules, by what they may import:

    export.py    torch: the S3D backbone + CRIF visual path as one ONNX model, the head alone
    metadata.py  stdlib: the exported directory's record (preprocessing, classes, model id)
    decode.py    PyAV + numpy: the recorded clips by pipeline.decode (pyav/decord), streams
    runtime.py   onnxruntime + numpy + pyarrow: classify videos, write predictions.parquet
    quantize.py  onnxruntime: int8 (QDQ) static quantisation calibrated on real clips

metadata, decode, runtime and quantize never import torch, Ray or transformers (a test runs
the runner with those imports, and decord's, made to fail), so an edge box needs onnxruntime,
numpy, PyAV and pyarrow only. The clips are the pipeline's own (pipeline.decode and
feature_extractors.clip_plan, both torch-free on this path), so they equal jobs/score.py's.
"""
