"""Evaluator job: scores a model and its checkpoints on SuperCLEVR-format counting questions and
pushes the scores to a Prometheus Pushgateway. See docs/operations.md ("Evaluator").

Kept light on purpose: it stands on r1v_common and imports nothing of r1v_job (tests/eval/test_imports.py),
so the evaluator image has torch, transformers and prometheus-client, but not the trainer, trl,
datasets or deepspeed; kubernetes/kubeflow-training are imported only to wait on a training job.
"""
