"""Submit an R1-V run from Python: the chart (charts/r1v, shipped inside this package as
r1v_submit/chart) rendered by Helm's own engine through helm-python-sdk, and the rendered objects
created through the kubernetes and kubeflow-training clients. `python -m r1v_submit --help`."""
