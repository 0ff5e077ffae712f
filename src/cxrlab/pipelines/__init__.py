"""Pipelines: the stages put together (compare: audit → train → test → diagnose → report;
diagnose: robustness and Grad-CAM of a finished run). The CLI calls these; they call the task
packages (data, models, training, evaluation, reporting), never the other way round."""
