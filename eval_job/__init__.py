"""Evaluator job: scores a model and its checkpoints on SuperCLEVR-format counting questions and
pushes the scores to a Prometheus Pushgateway. See docs/operations.md ("Evaluator").

Kept light on purpose: the evaluator image has torch, transformers and prometheus-client, but not
trl, datasets or deepspeed; kubernetes/kubeflow-training are imported only to wait on a PyTorchJob.
"""
