"""The floor both programs stand on: what the trainer (r1v_job), the evaluator (eval_job) and
r1v_submit share. Standard library, transformers and PIL only (transformers imported where a
processor is loaded; the kubernetes client where a job is read), so the evaluator's image needs
nothing of the trainer's.

- `prompts`: R1-V's exact prompt strings and the conversation they go in.
- `processing`: the one processor loader (PIL backend) and the one image check.
- `checkpoints`: the read side of a run's output folder: complete checkpoints, the resume point,
  the final weights, the completion marker, the revisions a run trained on.
- `jsonl`: the tolerant jsonl reader.
- `jobs`: the training job kinds (API coordinates, terminal conditions, rank-0 pod) and the one
  `wait_for_job`.
"""
